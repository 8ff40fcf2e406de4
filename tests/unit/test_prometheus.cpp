// The Prometheus rendering of metrics.jsonl records (launch/prometheus.h): names, HELP/TYPE,
// labels and their escaping, unit conversions, absent keys left out, NaN/Inf as the text format
// writes them; the table's own consistency; the textfile (marker, refusal of a foreign file) and
// the /metrics endpoint (the rendered text, a port in use, stopped at the end).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <set>
#include <sstream>

#include "launch/metrics.h"
#include "launch/prometheus.h"
#include "testing.h"

namespace switchyard::launch {
namespace {

namespace fs = std::filesystem;

StepRecord two_layers_of_two_experts() {
  StepRecord r;
  r.step = 3;
  r.loss = 2.5;
  r.ce = 2.25;
  r.lr = 1e-3;
  r.grad_norm = 0.75;
  r.tokens = 1000;
  r.seconds = 0.5;
  r.forward_s = 0.25;
  r.exchange.inter_node.bytes = int64_t{1} << 40;
  r.n_experts = 2;
  r.expert_counts = {3, 1, 0, 0};
  r.memory_mb = 1.5;
  r.memory_peak_mb = 2;
  r.time = 1700000000.25;
  return r;
}

std::string render(const nlohmann::json& step, std::string_view run = "r") {
  return prometheus_text(run, &step, nullptr);
}

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l == line) return true;
  return false;
}

#define EXPECT_LINE(text, line) EXPECT_TRUE(has_line(text, line)) << "no line '" << (line) << "' in:\n" << (text)

TEST(Prometheus, RendersAStepRecord) {
  const std::string t = render(step_json(two_layers_of_two_experts()));
  EXPECT_EQ(t.substr(0, t.find('\n')), "# switchyard metrics of run r");
  EXPECT_LINE(t, "# HELP switchyard_loss Training loss of the last step (cross-entropy plus the weighted aux and z "
                 "losses), mean over its micro-batches and ranks; NaN or +Inf when it was not finite.");
  EXPECT_LINE(t, "# TYPE switchyard_loss gauge");
  EXPECT_LINE(t, "switchyard_loss{run=\"r\"} 2.5");
  EXPECT_LINE(t, "switchyard_cross_entropy_loss{run=\"r\"} 2.25");
  EXPECT_LINE(t, "switchyard_step{run=\"r\"} 3");
  EXPECT_LINE(t, "switchyard_learning_rate{run=\"r\"} 0.001");
  EXPECT_LINE(t, "switchyard_grad_norm{run=\"r\"} 0.75");
  EXPECT_LINE(t, "switchyard_tokens_per_second{run=\"r\"} 2000");
  EXPECT_LINE(t, "switchyard_last_step_timestamp_seconds{run=\"r\"} 1700000000.25");
  // units: ms -> s, MiB -> bytes; integers stay exact
  EXPECT_LINE(t, "switchyard_step_seconds{run=\"r\"} 0.5");
  EXPECT_LINE(t, "switchyard_forward_seconds{run=\"r\"} 0.25");
  EXPECT_LINE(t, "switchyard_memory_bytes{run=\"r\"} 1572864");
  EXPECT_LINE(t, "switchyard_memory_peak_bytes{run=\"r\"} 2097152");
  EXPECT_LINE(t, "switchyard_exchange_inter_node_bytes{run=\"r\"} 1099511627776");
  // per MoE layer, and per expert of each
  EXPECT_LINE(t, "# TYPE switchyard_expert_load gauge");
  EXPECT_LINE(t, "switchyard_expert_load{run=\"r\",layer=\"0\",expert=\"0\"} 0.75");
  EXPECT_LINE(t, "switchyard_expert_load{run=\"r\",layer=\"0\",expert=\"1\"} 0.25");
  EXPECT_LINE(t, "switchyard_expert_load{run=\"r\",layer=\"1\",expert=\"1\"} 0");
  EXPECT_LINE(t, "switchyard_expert_busiest30_share{run=\"r\",layer=\"0\"} 0.75");
  EXPECT_LINE(t, "switchyard_expert_max_over_mean{run=\"r\",layer=\"0\"} 1.5");
  EXPECT_LINE(t, "switchyard_expert_load_cv{run=\"r\",layer=\"1\"} 0");
  EXPECT_LINE(t, "switchyard_expert_dropped_fraction{run=\"r\",layer=\"1\"} 0");
  EXPECT_LINE(t, "switchyard_experts_per_token{run=\"r\",layer=\"0\"} 0");
  EXPECT_LINE(t, "switchyard_run_finished{run=\"r\"} 0");
  EXPECT_LINE(prometheus_text("r", nullptr, nullptr, true), "switchyard_run_finished{run=\"r\"} 1");
}

TEST(Prometheus, UnitConversionsOfEveryScaledKey) {
  const nlohmann::json rec = {{"step_ms", 12.5},     {"forward_ms", 1.0},   {"backward_ms", 2.0},
                              {"optimizer_ms", 0.5}, {"exchange_ms", 0.25}, {"reduce_ms", 3.0},
                              {"data_wait_ms", 0.0}, {"expert_ms", 1e-3},   {"memory_mb", 0.5},
                              {"memory_peak_mb", 1024}};
  const std::string t = render(rec);
  EXPECT_LINE(t, "switchyard_step_seconds{run=\"r\"} 0.0125");
  EXPECT_LINE(t, "switchyard_forward_seconds{run=\"r\"} 0.001");
  EXPECT_LINE(t, "switchyard_backward_seconds{run=\"r\"} 0.002");
  EXPECT_LINE(t, "switchyard_optimizer_seconds{run=\"r\"} 0.0005");
  EXPECT_LINE(t, "switchyard_exchange_seconds{run=\"r\"} 0.00025");
  EXPECT_LINE(t, "switchyard_reduce_seconds{run=\"r\"} 0.003");
  EXPECT_LINE(t, "switchyard_data_wait_seconds{run=\"r\"} 0");
  EXPECT_LINE(t, "switchyard_expert_seconds{run=\"r\"} 1e-06");
  EXPECT_LINE(t, "switchyard_memory_bytes{run=\"r\"} 524288");
  EXPECT_LINE(t, "switchyard_memory_peak_bytes{run=\"r\"} 1073741824");
}

TEST(Prometheus, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(prometheus_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(prometheus_help_text("a\"b\\c\nd"), "a\"b\\\\c\\nd");
  const std::string t = render({{"loss", 1.0}}, "my \"run\"\\1\nx");
  EXPECT_EQ(t.substr(0, t.find('\n')), "# switchyard metrics of run my \\\"run\\\"\\\\1\\nx");
  EXPECT_LINE(t, "switchyard_loss{run=\"my \\\"run\\\"\\\\1\\nx\"} 1");
}

TEST(Prometheus, NonFiniteValues) {
  EXPECT_EQ(prometheus_number(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(prometheus_number(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(prometheus_number(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(prometheus_number(0.1), "0.1");
  EXPECT_EQ(prometheus_number(1e-300), "1e-300");
  StepRecord r = two_layers_of_two_experts();
  r.loss = std::numeric_limits<double>::quiet_NaN();
  r.ce = std::numeric_limits<double>::infinity();
  r.grad_norm = -std::numeric_limits<double>::infinity();
  const std::string t = render(step_json(r));  // the record the observers get holds the NaN (the file: null)
  EXPECT_LINE(t, "switchyard_loss{run=\"r\"} NaN");
  EXPECT_LINE(t, "switchyard_cross_entropy_loss{run=\"r\"} +Inf");
  EXPECT_LINE(t, "switchyard_grad_norm{run=\"r\"} -Inf");
  const nlohmann::json eval = {{"step", 10}, {"eval_loss", std::numeric_limits<double>::quiet_NaN()}, {"eval_tokens", 64}};
  const std::string e = prometheus_text("r", nullptr, &eval);
  EXPECT_LINE(e, "switchyard_eval_loss{run=\"r\"} NaN");
  EXPECT_LINE(e, "switchyard_eval_step{run=\"r\"} 10");
  EXPECT_LINE(e, "switchyard_eval_tokens{run=\"r\"} 64");
}

TEST(Prometheus, AbsentKeysAreNotExported) {
  const std::string t = render(step_json(two_layers_of_two_experts()));
  for (const char* name : {"switchyard_loss_scale", "switchyard_step_skipped", "switchyard_skipped_steps_total",
                           "switchyard_mfu_ratio", "switchyard_data_samples", "switchyard_data_padding_share",
                           "switchyard_selection_bias",
                           "switchyard_expert_decay_multiplier", "switchyard_eval_"})
    EXPECT_EQ(t.find(name), std::string::npos) << name << " in:\n" << t;
  // a model without MoE layers: empty lists, no family at all (not even HELP/TYPE)
  StepRecord dense = two_layers_of_two_experts();
  dense.expert_counts.clear();
  dense.n_experts = 0;
  const std::string d = render(step_json(dense));
  for (const char* name : {"switchyard_expert_load", "switchyard_expert_busiest30_share", "switchyard_experts_per_token"})
    EXPECT_EQ(d.find(name), std::string::npos) << name << " in:\n" << d;
  // null values (never in a record we make) are left out rather than written as text
  EXPECT_EQ(render({{"loss", nullptr}}).find("switchyard_loss"), std::string::npos);
  // no records yet: the marker and run_finished only
  EXPECT_EQ(prometheus_text("r", nullptr, nullptr),
            "# switchyard metrics of run r\n# HELP switchyard_run_finished 1 once the run ended normally (its last "
            "textfile stays), else 0.\n# TYPE switchyard_run_finished gauge\nswitchyard_run_finished{run=\"r\"} 0\n");
}

TEST(Prometheus, LossScalingDataLayerAndRanges) {
  StepRecord r = two_layers_of_two_experts();
  r.loss_scaling = true;
  r.loss_scale = 1024;
  r.skipped = true;
  r.skipped_steps = 7;
  r.mfu = 0.125;
  r.data = StepData{16, 12.5, 0.25, 0.1, 0.2, 0.5, 2, 3.5, 0.0625};
  r.selection_bias = {{-0.5, 0.25}, {0, 0}};
  r.expert_decay = {{0.5, 2}, {1, 1}};
  const std::string t = render(step_json(r));
  EXPECT_LINE(t, "switchyard_loss_scale{run=\"r\"} 1024");
  EXPECT_LINE(t, "switchyard_step_skipped{run=\"r\"} 1");
  EXPECT_LINE(t, "# TYPE switchyard_skipped_steps_total counter");
  EXPECT_LINE(t, "switchyard_skipped_steps_total{run=\"r\"} 7");
  EXPECT_LINE(t, "switchyard_mfu_ratio{run=\"r\"} 0.125");
  EXPECT_LINE(t, "switchyard_data_samples{run=\"r\"} 16");
  EXPECT_LINE(t, "switchyard_data_effective_samples{run=\"r\"} 12.5");
  EXPECT_LINE(t, "switchyard_data_noisy_drawn_share{run=\"r\"} 0.25");
  EXPECT_LINE(t, "switchyard_data_weight_max{run=\"r\"} 2");
  EXPECT_LINE(t, "switchyard_data_median_loss{run=\"r\"} 3.5");
  EXPECT_LINE(t, "switchyard_data_padding_share{run=\"r\"} 0.0625");
  EXPECT_LINE(t, "switchyard_selection_bias{run=\"r\",layer=\"0\",bound=\"min\"} -0.5");
  EXPECT_LINE(t, "switchyard_selection_bias{run=\"r\",layer=\"0\",bound=\"max\"} 0.25");
  EXPECT_LINE(t, "switchyard_expert_decay_multiplier{run=\"r\",layer=\"0\",bound=\"max\"} 2");
  r.skipped = false;
  EXPECT_LINE(render(step_json(r)), "switchyard_step_skipped{run=\"r\"} 0");
}

// Every line is a comment or a sample of the family whose HELP and TYPE came just before it; a
// family appears once; every sample has the run label first.
TEST(Prometheus, TextFormatStructure) {
  StepRecord r = two_layers_of_two_experts();
  r.loss_scaling = true;
  r.data = StepData{};
  const nlohmann::json eval = {{"step", 3}, {"eval_loss", 2.0}, {"eval_tokens", 64}};
  const nlohmann::json step = step_json(r);
  const std::string t = prometheus_text("r", &step, &eval);
  const std::regex help(R"(# HELP (switchyard_[a-z0-9_]+) \S.*)"), type(R"(# TYPE (switchyard_[a-z0-9_]+) (gauge|counter))"),
      sample(R"((switchyard_[a-z0-9_]+)\{run="r"(,[a-z]+="[^"]*")*\} (-?[0-9.e+-]+|NaN|\+Inf|-Inf))");
  std::istringstream in(t);
  std::string line, family;
  std::set<std::string> seen;
  int samples = 0;
  std::getline(in, line);  // the marker
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      family = m[1];
      EXPECT_TRUE(seen.insert(family).second) << family << " twice";
      ASSERT_TRUE(std::getline(in, line));
      ASSERT_TRUE(std::regex_match(line, m, type)) << line;
      EXPECT_EQ(m[1], family);
    } else {
      ASSERT_TRUE(std::regex_match(line, m, sample)) << line;
      EXPECT_EQ(m[1], family) << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 40);
  EXPECT_TRUE(seen.count("switchyard_eval_loss"));
}

TEST(Prometheus, TheTable) {
  std::set<std::string_view> names;
  StepRecord r = two_layers_of_two_experts();  // every optional part on
  r.loss_scaling = true;
  r.mfu = 0.5;
  r.data = StepData{};
  r.selection_bias = {{0, 0}, {0, 0}};
  r.expert_decay = {{1, 1}, {1, 1}};
  const nlohmann::json step = step_json(r);
  const nlohmann::json eval = {{"step", 1}, {"eval_loss", 1.0}, {"eval_tokens", 1}};
  const std::string t = prometheus_text("r", &step, &eval);
  for (const PrometheusMetric& m : prometheus_metrics()) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name << " twice";
    EXPECT_EQ(m.name.substr(0, 11), "switchyard_") << m.name;
    EXPECT_TRUE(m.type == "gauge" || m.type == "counter") << m.name;
    const bool total = m.name.size() > 6 && m.name.substr(m.name.size() - 6) == "_total";
    EXPECT_EQ(total, m.type == "counter") << m.name;  // _total exactly on counters
    EXPECT_EQ(m.name.find("_ms"), std::string_view::npos) << m.name;  // base units
    EXPECT_EQ(m.name.find("_mb"), std::string_view::npos) << m.name;
    EXPECT_GT(m.divisor, 0) << m.name;
    EXPECT_FALSE(m.help.empty()) << m.name;
    // each row is found in the record it reads (a key misspelt in the table would never export)
    EXPECT_NE(t.find(fmt::format("\n{}{{", m.name)), std::string::npos) << m.name << " (" << m.key << ") not rendered";
  }
}

// docs/OBSERVING.md's table names every metric.
TEST(Prometheus, DocumentedNames) {
  std::ifstream in(std::string(SWITCHYARD_SOURCE_DIR) + "/docs/OBSERVING.md");
  std::stringstream doc;
  doc << in.rdbuf();
  ASSERT_FALSE(doc.str().empty());
  for (const PrometheusMetric& m : prometheus_metrics())
    EXPECT_NE(doc.str().find(fmt::format("| `{}` | {} |", m.name, m.type)), std::string::npos) << m.name;
  EXPECT_HAS(doc.str(), "`switchyard_run_finished`");
}

// ---- the observer: textfile and /metrics ----

core::ExperimentConfig config_named(const std::string& name) {
  core::ExperimentConfig cfg;
  cfg.run.name = name;
  return cfg;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Prometheus, Textfile) {
  const fs::path dir = test::temp_dir("prometheus_textfile");
  core::ExperimentConfig cfg = config_named("tf");
  cfg.observe.prometheus_textfile = (dir / "sy.prom").string();
  auto obs = make_prometheus_observer({cfg, dir});
  ASSERT_TRUE(obs);
  EXPECT_EQ(read_file(dir / "sy.prom"), prometheus_text("tf", nullptr, nullptr));  // written at start
  const nlohmann::json a = step_json(two_layers_of_two_experts());
  obs->step(a);
  const nlohmann::json e = {{"step", 3}, {"eval_loss", 2.0}, {"eval_tokens", 64}};
  obs->eval(e);
  obs->close();
  EXPECT_EQ(read_file(dir / "sy.prom"), prometheus_text("tf", &a, &e, true));
  obs.reset();
  for (const auto& entry : fs::directory_iterator(dir))  // no temporaries left behind
    EXPECT_EQ(entry.path().filename(), "sy.prom");
  // a file Switchyard wrote (another run's) may be replaced
  cfg.run.name = "tf2";
  obs = make_prometheus_observer({cfg, dir});
  EXPECT_EQ(read_file(dir / "sy.prom"), prometheus_text("tf2", nullptr, nullptr));
}

TEST(Prometheus, TextfileRefusals) {
  const fs::path dir = test::temp_dir("prometheus_textfile_refusals");
  core::ExperimentConfig cfg = config_named("tf");
  const auto refused = [&](const fs::path& p) {
    cfg.observe.prometheus_textfile = p.string();
    return test::usage_error([&] { make_prometheus_observer({cfg, dir}); });
  };
  {
    std::ofstream(dir / "node.prom") << "# HELP node_x x\nnode_x 1\n";
    const std::string msg = refused(dir / "node.prom");
    EXPECT_HAS(msg, "observe.prometheus_textfile");
    EXPECT_HAS(msg, "did not write it");
    EXPECT_EQ(read_file(dir / "node.prom"), "# HELP node_x x\nnode_x 1\n");  // left as it was
  }
  EXPECT_HAS(refused(dir / "metrics.txt"), "must end in .prom");
  EXPECT_HAS(refused(dir / "missing" / "sy.prom"), "does not exist");
  fs::create_directory(dir / "folder.prom");
  EXPECT_HAS(refused(dir / "folder.prom"), "is not a file");
}

// A port nothing listens on (the kernel's choice, released again).
int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t n = sizeof(a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(s);
  return ntohs(a.sin_port);
}

// GET path over HTTP/1.0 on 127.0.0.1:port: the body, or nullopt when nothing answers.
std::optional<std::string> http_get(int port, const std::string& path) {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(s);
    return std::nullopt;
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  EXPECT_EQ(::send(s, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::recv(s, buf, sizeof(buf), 0)) > 0;) got.append(buf, static_cast<size_t>(n));
  ::close(s);
  const size_t body = got.find("\r\n\r\n");
  EXPECT_NE(body, std::string::npos) << got;
  EXPECT_HAS(got.substr(0, body), "Content-Type: text/plain; version=0.0.4");
  return got.substr(body + 4);
}

TEST(Prometheus, Endpoint) {
  const fs::path dir = test::temp_dir("prometheus_endpoint");
  core::ExperimentConfig cfg = config_named("ep");
  cfg.observe.prometheus_port = free_port();
  cfg.observe.prometheus_address = "127.0.0.1";
  struct sigaction before {}, after {};
  ::sigaction(SIGPIPE, nullptr, &before);
  auto obs = make_prometheus_observer({cfg, dir});
  ::sigaction(SIGPIPE, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);  // httplib's Server() ignores SIGPIPE process-wide; undone
  const int port = static_cast<int>(cfg.observe.prometheus_port);
  EXPECT_EQ(http_get(port, "/metrics"), prometheus_text("ep", nullptr, nullptr));  // listening when made
  const nlohmann::json a = step_json(two_layers_of_two_experts());
  obs->step(a);
  EXPECT_EQ(http_get(port, "/metrics"), prometheus_text("ep", &a, nullptr));
  // scrapers that hang up on a large response (before reading it, or with a reset after its first
  // bytes) neither end the process nor stop the server
  nlohmann::json big = a;
  big["expert_load"] = nlohmann::json::array();
  for (int l = 0; l < 64; ++l) big["expert_load"].push_back(std::vector<double>(256, 1.0 / 256));
  obs->step(big);
  for (int i = 0; i < 20; ++i) {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(static_cast<uint16_t>(port));
    ASSERT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    ASSERT_EQ(::send(s, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    if (i % 2) {
      char buf[64];
      ASSERT_GT(::recv(s, buf, sizeof(buf), 0), 0);
      const linger rst{1, 0};
      ::setsockopt(s, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
    }
    ::close(s);
  }
  const auto body = http_get(port, "/metrics");
  ASSERT_TRUE(body);
  EXPECT_GT(body->size(), size_t{1} << 20);
  // the port is taken: a second run is refused, naming the key
  EXPECT_HAS(test::usage_error([&] { make_prometheus_observer({cfg, dir}); }), "observe.prometheus_port");
  obs->close();  // the run ended: nothing listens any more
  EXPECT_EQ(http_get(port, "/metrics"), std::nullopt);
  obs.reset();
  // an address that is not this machine's (TEST-NET-1)
  cfg.observe.prometheus_address = "192.0.2.1";
  EXPECT_HAS(test::usage_error([&] { make_prometheus_observer({cfg, dir}); }), "observe.prometheus_address");
}

}  // namespace
}  // namespace switchyard::launch
