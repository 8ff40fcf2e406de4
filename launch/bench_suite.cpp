// launch/bench_suite.cpp: `switchyard bench`: the scenario table (the one list of names), --only,
// the suite's shared state and ceilings (launch/bench_suite.h), the table and the --json file.
// Under mpirun only the scenarios that need several ranks run (exchange, all-reduce); on one rank
// those say how to run them, and everything else runs.
#include <fcntl.h>
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/cpu/bf16_matmul.h"
#include "core/error.h"
#include "data/prepare.h"
#include "launch/bench_suite.h"
#include "launch/peak.h"

namespace switchyard::launch {

namespace fs = std::filesystem;

namespace {

struct Scenario {
  std::string name;
  std::string what;
  bool needs_ranks = false;  // collective over several ranks (mpirun)
  std::function<void(BenchSuite&)> run;
};

// Every scenario in the order the suite runs them; train_<config> for each YAML of the configs folder.
std::vector<Scenario> scenarios(const std::string& configs) {
  std::vector<Scenario> out = {
      {"gemm_fp32", "square fp32 GEMM (the GEMM peak)", false, bench_gemm_fp32},
      {"gemm_bf16", "square GEMM with bf16-rounded operands (the bf16 training path)", false, bench_gemm_bf16},
      {"attention_fwd", "causal GQA attention forward", false, bench_attention_fwd},
      {"attention_bwd", "causal GQA attention backward", false, bench_attention_bwd},
      {"moe_fwd_balanced", "MoE layer forward (route, dispatch, experts, combine), balanced routing", false,
       bench_moe_fwd_balanced},
      {"moe_bwd_balanced", "MoE layer backward, balanced routing", false, bench_moe_bwd_balanced},
      {"moe_fwd_skewed", "MoE layer forward, skewed routing (a few experts take most tokens)", false,
       bench_moe_fwd_skewed},
      {"moe_bwd_skewed", "MoE layer backward, skewed routing", false, bench_moe_bwd_skewed},
      {"exchange_flat", "token exchange, flat (plan, dispatch, combine)", true, bench_exchange_flat},
      {"exchange_hierarchical", "token exchange, hierarchical (two nodes simulated)", true,
       bench_exchange_hierarchical},
      {"allreduce", "gradient all-reduce of a model's arena (bucketed, GradientReducer)", true, bench_allreduce},
      {"adamw", "AdamW step over a parameter arena", false, bench_adamw},
      {"data_loading", "training micro-batches drawn from a token file", false, bench_data_loading},
  };
  std::vector<std::string> yamls;
  std::error_code ec;
  if (fs::is_directory(configs, ec))
    for (const auto& f : fs::directory_iterator(configs, ec))
      if (f.path().extension() == ".yaml") yamls.push_back(f.path().stem().string());
  std::sort(yamls.begin(), yamls.end());
  for (const std::string& c : yamls)
    out.push_back({"train_" + c, fmt::format("one optimizer step of {}/{}.yaml", configs, c), false,
                   [c](BenchSuite& s) { bench_train_config(s, c); }});
  out.push_back({"eval", "evaluation forward over validation windows (tiny config)", false, bench_eval});
  out.push_back({"checkpoint_save", "checkpoint save (HDF5 + manifest, atomic)", false, bench_checkpoint_save});
  out.push_back({"checkpoint_load", "checkpoint load (names, shapes, CRCs checked)", false, bench_checkpoint_load});
  out.push_back({"export", "export to the Hugging Face layout (bf16 safetensors)", false, bench_export});
  return out;
}

// A token of --only selects a scenario by name, or a family: the scenarios whose name starts with
// the token and `_` (exchange: exchange_flat and exchange_hierarchical).
bool selects(const std::string& token, const std::string& name) {
  return name == token || (name.size() > token.size() && name.compare(0, token.size(), token) == 0 &&
                           name[token.size()] == '_');
}

std::vector<Scenario> selected(const BenchSuiteOptions& opts) {
  std::vector<Scenario> all = scenarios(opts.configs);
  if (opts.only.empty()) return all;
  for (const std::string& token : opts.only) {
    if (std::none_of(all.begin(), all.end(), [&](const Scenario& sc) { return selects(token, sc.name); })) {
      std::string names;
      for (const Scenario& sc : all) names += (names.empty() ? "" : ",") + sc.name;
      const bool no_configs = std::none_of(all.begin(), all.end(), [](const Scenario& sc) { return selects("train", sc.name); });
      throw_usage("bench --only: no scenario `{}`; valid names (or a family, the part before a `_`, e.g. "
                  "exchange): {}{}",
                  token, names,
                  no_configs ? fmt::format(" (no train_* names: no YAML config in {}; run from the repository root "
                                           "or pass --configs)", opts.configs)
                             : "");
    }
  }
  std::vector<Scenario> out;
  for (Scenario& sc : all)
    if (std::any_of(opts.only.begin(), opts.only.end(), [&](const std::string& t) { return selects(t, sc.name); }))
      out.push_back(std::move(sc));
  return out;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

std::string format_rate(double v, const std::string& unit) {
  return v >= 100 ? fmt::format("{:.0f} {}", v, unit) : fmt::format("{:.3g} {}", v, unit);
}

}  // namespace

// ---- BenchSuite ----

BenchSuite::BenchSuite(const BenchSuiteOptions& o, const parallel::MpiContext& m) : opts(o), mpi(m) {
  backend_ = core::make_backend(o.device, o.threads, 0, "bench --device");
  world_ = parallel::MpiCommunicator::world();
  fs::path base = o.dir.empty() ? fs::temp_directory_path() : fs::path(o.dir);
  std::error_code ec;
  fs::create_directories(base, ec);
  std::string pattern = (base / "switchyard-bench-XXXXXX").string();
  if (!mkdtemp(pattern.data()))
    throw_usage("bench --dir {}: cannot create a scratch folder there ({}); pass a writable folder", base.string(),
                std::strerror(errno));
  scratch_ = pattern;
}

BenchSuite::~BenchSuite() {
  std::error_code ec;
  fs::remove_all(scratch_, ec);
}

double BenchSuite::gemm_rate(bool bf16) {
  double& r = bf16 ? gemm_bf16_ : gemm_fp32_;
  if (r == 0) {
    const core::GemmRounding rounding = bf16 ? core::GemmRounding{core::Dtype::bf16, core::Dtype::bf16,
                                                                  core::Dtype::bf16, core::Dtype::bf16}
                                             : core::GemmRounding{};
    r = measured_gemm_peak(*backend_, rounding);
  }
  return r;
}

double BenchSuite::seconds_per_run(const std::function<void()>& work) {
  double best = 1e30;
  for (int b = 0; b < (quick() ? 3 : 2); ++b) best = std::min(best, backend_->seconds_per_run(work, quick() ? 2 : 3));
  return best;
}

double BenchSuite::gemm_peak() { return std::max(gemm_rate(false), gemm_rate(true)); }

double BenchSuite::memory_bandwidth(double bytes_moved) {
  if (backend_->device() < 0) return host_memory_bandwidth(bytes_moved);
  if (memory_bandwidth_ == 0) {
    const size_t bytes = size_t{1} << 30;
    void* a = backend_->alloc(bytes);
    void* b = backend_->alloc(bytes);
    const double sec = seconds_per_run([&] { backend_->copy(b, a, bytes); });
    backend_->release(a);
    backend_->release(b);
    memory_bandwidth_ = 2.0 * static_cast<double>(bytes) / sec;
  }
  return memory_bandwidth_;
}

double BenchSuite::host_memory_bandwidth(double bytes_moved) {
  // An in-place triad a += b * c: reads 3 arrays and writes one it read (no write-allocate
  // traffic uncounted), moving the same bytes as the row (a cache holds a small working set: a
  // fixed-size triad would flatter or wrong the row); at least 4 MiB per array.
  const auto n = std::max<int64_t>(int64_t{1} << 20, static_cast<int64_t>(bytes_moved / 16));
  double& bw = host_bandwidth_[n];
  if (bw == 0) {
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n), 1.f), c(static_cast<size_t>(n), 2.f);
    const int threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();
    double best = 1e30;
    for (int r = 0; r < 4; ++r) {  // the first pass touches the pages
      const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t i = 0; i < n; ++i) a[i] += b[i] * c[i];
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) best = std::min(best, sec);
    }
    if (a[n / 2] != 8.f) throw_internal("bench: the stream triad computed a wrong value");
    bw = 4.0 * 4.0 * static_cast<double>(n) / best;
  }
  return bw;
}

double BenchSuite::write_fsync_rate(const fs::path& folder, int64_t bytes) {
  const fs::path file = folder / "bench-plain-write.tmp";
  std::vector<char> block(4 << 20, 'x');
  const auto t0 = std::chrono::steady_clock::now();
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw_usage("bench: cannot write {} ({}); pass a writable --dir", file.string(), std::strerror(errno));
  for (int64_t left = bytes; left > 0;) {
    const ssize_t w = ::write(fd, block.data(), static_cast<size_t>(std::min<int64_t>(left, block.size())));
    if (w <= 0) {
      ::close(fd);
      throw_usage("bench: writing {} failed ({}); free space there or pass another --dir", file.string(),
                  std::strerror(errno));
    }
    left -= w;
  }
  ::fsync(fd);
  ::close(fd);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fs::remove(file);
  return static_cast<double>(bytes) / sec;
}

double BenchSuite::plain_read_rate(const fs::path& folder) {
  std::vector<char> block(4 << 20);
  int64_t total = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& f : fs::recursive_directory_iterator(folder)) {
    if (!f.is_regular_file()) continue;
    std::ifstream in(f.path(), std::ios::binary);
    while (in.read(block.data(), static_cast<std::streamsize>(block.size())) || in.gcount() > 0) total += in.gcount();
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(total) / sec;
}

const std::string& BenchSuite::token_file() {
  if (token_file_.empty()) {
    const fs::path text = scratch_ / "text";
    fs::create_directories(text);
    for (int d = 0; d < 40; ++d) {  // 40 documents of ~24 KB of varied lines
      std::ofstream f(text / fmt::format("doc{:02}.txt", d));
      for (int i = 0; i < 400; ++i)
        f << fmt::format("document {} line {}: the quick brown fox jumps over the lazy dog {}\n", d, i,
                         (i * 7919 + d * 104729) % 100000);
    }
    token_file_ = (scratch_ / "tokens.h5").string();
    data::prepare_corpus({text.string()}, token_file_, 0.1);
  }
  return token_file_;
}

std::string BenchSuite::config_path(const std::string& name) const {
  const fs::path p = fs::path(opts.configs) / (name + ".yaml");
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? p.string() : std::string();
}

std::vector<std::string> BenchSuite::run_overrides(const std::string& scenario) {
  const fs::path run = scratch_ / scenario;
  return {"data.train=" + token_file(),
          "data.prefetch=false",
          fmt::format("train.device={}", opts.device == core::Device::cuda ? "cuda" : "cpu"),
          fmt::format("train.threads={}", opts.threads),
          "run.dir=" + run.string(),
          "checkpoint.dir=" + (run / "checkpoints").string(),
          "checkpoint.keep_last=1",
          "observe.prometheus_port=0",
          "observe.tensorboard=false",
          fmt::format("observe.peak_tflops={}", gemm_peak() / 1e12)};
}

core::ExperimentConfig BenchSuite::run_config(const std::string& config, const std::string& scenario,
                                              const std::vector<std::string>& extra) {
  std::vector<std::string> o = run_overrides(scenario);
  o.insert(o.end(), extra.begin(), extra.end());
  return core::load_experiment_config(config_path(config), o);
}

void BenchSuite::add(BenchRow row) {
  order_.emplace_back(false, rows_.size());
  rows_.push_back(std::move(row));
}

void BenchSuite::skip(const std::string& scenario, const std::string& reason) {
  order_.emplace_back(true, skipped_.size());
  skipped_.push_back({scenario, reason});
}

QuietStdout::QuietStdout() {
  std::fflush(stdout);
  saved_ = ::dup(1);
  const int null = ::open("/dev/null", O_WRONLY);
  if (null >= 0) {
    ::dup2(null, 1);
    ::close(null);
  }
}

QuietStdout::~QuietStdout() {
  std::fflush(stdout);
  if (saved_ >= 0) {
    ::dup2(saved_, 1);
    ::close(saved_);
  }
}

int64_t bytes_under(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return static_cast<int64_t>(fs::file_size(path, ec));
  int64_t total = 0;
  for (const auto& f : fs::recursive_directory_iterator(path, ec))
    if (f.is_regular_file()) total += static_cast<int64_t>(f.file_size());
  return total;
}

// ---- the command ----

int run_bench_suite(const BenchSuiteOptions& opts, const parallel::MpiContext& mpi) {
  std::vector<Scenario> chosen = selected(opts);
  if (opts.list) {
    if (mpi.rank() == 0)
      for (const Scenario& sc : scenarios(opts.configs))
        fmt::print("{:<24} {}{}\n", sc.name, sc.what, sc.needs_ranks ? " [mpirun]" : "");
    return 0;
  }
  BenchSuite suite(opts, mpi);
  const bool several = mpi.size() > 1;
  for (const Scenario& sc : chosen) {
    if (sc.needs_ranks && !several) {
      suite.skip(sc.name, "needs 2 ranks or more: mpirun -np 4 switchyard bench --only exchange,allreduce");
    } else if (sc.needs_ranks && opts.device == core::Device::cuda) {
      suite.skip(sc.name, "host MPI only; on GPUs the NCCL exchange is timed by the train_* rows under mpirun");
    } else if (!sc.needs_ranks && several) {
      suite.skip(sc.name, "runs on one rank: switchyard bench without mpirun");
    } else {
      sc.run(suite);
    }
  }
  if (mpi.rank() != 0) return 0;

  const std::string machine_cpu = cpu_model();
  const int threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();
  const std::string isa = core::onednn_cpu_isa();
  fmt::print("switchyard bench on {}{}: {} ({} logical cores), {} thread(s), oneDNN ISA {}, {} rank(s){}\n",
             suite.backend().name(), suite.backend().device() >= 0 ? fmt::format(":{}", suite.backend().device()) : "",
             machine_cpu, std::thread::hardware_concurrency(), threads, isa, mpi.size(), opts.quick ? ", --quick" : "");
  fmt::print("{:<22} {:<42} {:>10} {:>16} {:>16} {:>8}  {}\n", "scenario", "shape", "ms/run", "rate", "ceiling",
             "fraction", "ceiling is");
  nlohmann::json rows = nlohmann::json::array(), skipped = nlohmann::json::array();
  for (const auto& [is_skip, i] : suite.order()) {
    if (is_skip) {
      const auto& sk = suite.skipped()[i];
      fmt::print("{:<22} skipped: {}\n", sk.scenario, sk.reason);
      skipped.push_back({{"scenario", sk.scenario}, {"reason", sk.reason}});
      continue;
    }
    const BenchRow& r = suite.rows()[i];
    const double fraction = r.rate / r.ceiling;
    fmt::print("{:<22} {:<42} {:>10.3f} {:>16} {:>16} {:>8.3f}  {}{}\n", r.scenario, r.shape, r.seconds * 1e3,
               format_rate(r.rate, r.unit), format_rate(r.ceiling, r.unit), fraction, r.ceiling_what,
               r.note.empty() ? "" : "; " + r.note);
    rows.push_back({{"scenario", r.scenario}, {"shape", r.shape}, {"seconds", r.seconds}, {"rate", r.rate},
                    {"unit", r.unit}, {"ceiling", r.ceiling}, {"ceiling_what", r.ceiling_what},
                    {"fraction", fraction}, {"ranks", mpi.size()}, {"note", r.note}});
  }
  if (!opts.json.empty()) {
    const nlohmann::json doc{
        {"schema", "switchyard.bench/1"},
        {"machine", {{"cpu", machine_cpu}, {"logical_cores", std::thread::hardware_concurrency()},
                     {"threads", threads}, {"onednn_isa", isa}, {"backend", suite.backend().name()}}},
        {"quick", opts.quick},
        {"ranks", mpi.size()},
        {"rows", rows},
        {"skipped", skipped}};
    std::ofstream f(opts.json);
    f << doc.dump(1) << "\n";
    if (!f) throw_usage("bench --json {}: cannot write it; pass a writable path", opts.json);
  }
  return 0;
}

}  // namespace switchyard::launch
