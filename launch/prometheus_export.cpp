// launch/prometheus_export.cpp: the Prometheus observer of launch/prometheus.h: GET /metrics on
// observe.prometheus_address:observe.prometheus_port (cpp-httplib, its own threads) and the
// node_exporter textfile observe.prometheus_textfile (written by a thread of its own, so that the
// fsyncs of the durable write never hold up a step).
#include <httplib.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "core/formats/durable.h"
#include "launch/prometheus.h"

namespace switchyard::launch {

namespace {

namespace fs = std::filesystem;

constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

// The current exposition text; a scrape takes the whole text of one step (swapped under the mutex).
class Exposition {
 public:
  void set(std::string text) {
    auto next = std::make_shared<const std::string>(std::move(text));
    const std::lock_guard<std::mutex> lock(mu_);
    text_.swap(next);
  }
  std::shared_ptr<const std::string> get() const {
    const std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const std::string> text_ = std::make_shared<const std::string>();
};

// GET /metrics served on a background thread (httplib's listener and a pool of two workers).
class MetricsServer {
 public:
  MetricsServer(const std::string& address, int port, const Exposition& exposition) {
    sigpipe_.restore();
    require_resolvable(address, port);
    // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, with which a second run on the
    // same port would bind too and share the scrapes
    server_.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    server_.new_task_queue = [] { return new httplib::ThreadPool(2); };
    // an idle kept-alive connection holds a worker (and stop()) for this long; a scraper reconnects
    server_.set_keep_alive_timeout(1);
    server_.Get("/metrics", [&exposition](const httplib::Request&, httplib::Response& res) {
      const auto text = exposition.get();
      res.set_content(*text, kContentType);
    });
    server_.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("Switchyard: the run's metrics are at /metrics\n", "text/plain; charset=utf-8");
    });
    errno = 0;
    if (!server_.bind_to_port(address, port)) throw_bind_error(address, port, errno);
    thread_ = std::thread([this] {
      // Every asynchronous signal is blocked in this thread and the workers it starts (they inherit
      // the mask): SIGPIPE, so that a scraper hanging up mid-response makes send() return EPIPE
      // instead of ending the run; the rest, so that no signal interrupts httplib's socket calls
      // (SIGTERM and SIGUSR1 are blocked already: launch/stop_signals.h).
      sigset_t async;
      sigfillset(&async);
      for (int sync : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&async, sync);
      pthread_sigmask(SIG_BLOCK, &async, nullptr);
      server_.listen_after_bind();
      listen_returned_ = true;
    });
    // stop() only stops a running server: wait until the listener runs
    while (!server_.is_running() && !listen_returned_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!server_.is_running()) {
      thread_.join();
      throw_internal("observe.prometheus_port: the listener on {}:{} stopped at once", address, port);
    }
  }
  ~MetricsServer() {
    server_.stop();
    thread_.join();
  }
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

 private:
  static void require_resolvable(const std::string& address, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(address.c_str(), std::to_string(port).c_str(), &hints, &found);
    if (rc != 0)
      throw_usage("observe.prometheus_address: cannot resolve '{}' ({}); give an address of this machine (0.0.0.0: "
                  "every interface, 127.0.0.1: this host only)", address, ::gai_strerror(rc));
    ::freeaddrinfo(found);
  }

  [[noreturn]] static void throw_bind_error(const std::string& address, int port, int err) {
    switch (err) {
      case EADDRINUSE:
        throw_usage("observe.prometheus_port: port {} on {} is already in use (another run's exporter or another "
                    "server listens there); choose a free port", port, address);
      case EACCES:
        throw_usage("observe.prometheus_port: listening on port {} is not permitted (ports below 1024 need root); "
                    "choose a port above 1023", port);
      case EADDRNOTAVAIL:
        throw_usage("observe.prometheus_address: {} is not an address of this machine; use 0.0.0.0 (every "
                    "interface), 127.0.0.1 (this host only) or one of its own addresses", address);
      default:
        throw_usage("observe.prometheus_port, observe.prometheus_address: cannot listen on {}:{} ({})", address, port,
                    err ? std::strerror(err) : "unknown reason");
    }
  }

  // httplib's Server() ignores SIGPIPE for the whole process; the trainer keeps what it had (the
  // server's own threads block it instead)
  struct SigpipeDisposition {
    struct sigaction old {};
    SigpipeDisposition() { ::sigaction(SIGPIPE, nullptr, &old); }
    void restore() const { ::sigaction(SIGPIPE, &old, nullptr); }
  } sigpipe_;  // before server_: taken before its constructor runs
  httplib::Server server_;
  std::atomic<bool> listen_returned_{false};
  std::thread thread_;
};

// The textfile: the newest text handed to put() is written by the protocol of
// core/formats/durable.h on a thread of its own (texts that arrive while it writes are coalesced:
// the file always holds one whole, recent step). A failed write is a usage error from the next
// put() or flush().
class TextfileWriter {
 public:
  explicit TextfileWriter(std::string path) : path_(std::move(path)), thread_([this] { loop(); }) {}
  ~TextfileWriter() {  // writes what is pending, then ends
    {
      const std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  TextfileWriter(const TextfileWriter&) = delete;
  TextfileWriter& operator=(const TextfileWriter&) = delete;

  void put(std::string text) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      rethrow();
      pending_ = std::move(text);
    }
    cv_.notify_all();
  }
  // Returns once everything handed over is in the file.
  void flush() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !pending_ && !busy_; });
    rethrow();
  }

 private:
  void rethrow() {  // under mu_
    if (!error_.empty()) throw_usage("observe.prometheus_textfile: {}", error_);
  }
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return pending_ || stop_; });
      if (!pending_) return;
      const std::string text = std::move(*pending_);
      pending_.reset();
      busy_ = true;
      lock.unlock();
      std::string err;
      try {
        core::formats::write_text_durable(path_, text);
      } catch (const std::exception& e) {
        err = e.what();
      }
      lock.lock();
      busy_ = false;
      if (!err.empty() && error_.empty()) error_ = err;
      cv_.notify_all();
    }
  }

  std::string path_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<std::string> pending_;
  bool busy_ = false, stop_ = false;
  std::string error_;
  std::thread thread_;  // last: started once the rest is set up
};

// The checks of observe.prometheus_textfile before anything is written.
void check_textfile(const std::string& path) {
  const fs::path p(path);
  if (p.extension() != ".prom")
    throw_usage("observe.prometheus_textfile: {} must end in .prom (node_exporter's textfile collector reads only "
                "*.prom files)", path);
  const fs::path folder = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw_usage("observe.prometheus_textfile: the folder {} does not exist; create it (node_exporter's "
                "--collector.textfile.directory) or fix the path", folder.string());
  if (!fs::exists(p, ec)) return;
  if (!fs::is_regular_file(p, ec))
    throw_usage("observe.prometheus_textfile: {} exists and is not a file; choose another name", path);
  std::ifstream in(p);
  std::string first;
  std::getline(in, first);
  if (!in && !in.eof())
    throw_usage("observe.prometheus_textfile: cannot read {} to check who wrote it", path);
  if (first.rfind(kPrometheusMarker, 0) != 0)
    throw_usage("observe.prometheus_textfile: {} exists and Switchyard did not write it (its first line is not "
                "'{}...'); Switchyard never overwrites it: choose another file name, or remove it", path,
                kPrometheusMarker);
}

class PrometheusObserver final : public RunObserver {
 public:
  explicit PrometheusObserver(const core::ExperimentConfig& cfg) : run_(cfg.run.name) {
    const core::ObserveConfig& ob = cfg.observe;
    if (!ob.prometheus_textfile.empty()) check_textfile(ob.prometheus_textfile);
    publish();
    if (ob.prometheus_port > 0)
      server_ = std::make_unique<MetricsServer>(ob.prometheus_address, static_cast<int>(ob.prometheus_port), exposition_);
    if (!ob.prometheus_textfile.empty()) {
      core::formats::write_text_durable(ob.prometheus_textfile, *exposition_.get());  // a bad folder fails now
      textfile_ = std::make_unique<TextfileWriter>(ob.prometheus_textfile);
    }
  }

  void step(const nlohmann::json& record) override {
    last_step_ = record;
    publish();
  }
  void eval(const nlohmann::json& record) override {
    last_eval_ = record;
    publish();
  }
  void close() override {
    finished_ = true;
    publish();
    server_.reset();  // stops serving: the run is over
    if (textfile_) textfile_->flush();
  }

 private:
  void publish() {
    std::string text = prometheus_text(run_, last_step_.is_null() ? nullptr : &last_step_,
                                       last_eval_.is_null() ? nullptr : &last_eval_, finished_);
    if (textfile_) textfile_->put(text);
    exposition_.set(std::move(text));
  }

  std::string run_;
  nlohmann::json last_step_, last_eval_;  // null until the first record
  bool finished_ = false;
  Exposition exposition_;
  std::unique_ptr<TextfileWriter> textfile_;
  std::unique_ptr<MetricsServer> server_;  // last: stopped first
};

}  // namespace

std::unique_ptr<RunObserver> make_prometheus_observer(const ObservedRun& run) {
  const core::ObserveConfig& ob = run.cfg.observe;
  if (ob.prometheus_port == 0 && ob.prometheus_textfile.empty()) return nullptr;
  return std::make_unique<PrometheusObserver>(run.cfg);
}

}  // namespace switchyard::launch
