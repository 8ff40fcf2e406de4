#include "launch/data_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "data/sample_stats.h"
#include "data/samples.h"
#include "data/token_source.h"
#include "launch/checkpoint.h"
#include "launch/data_checkpoint.h"

namespace switchyard::launch {
namespace fs = std::filesystem;

namespace {

// A checkpoint folder or directory as given, else a run folder's checkpoints/.
std::string checkpoint_folder(const std::string& path) {
  const fs::path p(path);
  if (!fs::exists(p / "manifest.json") && !fs::exists(p / "latest") && fs::exists(p / "checkpoints" / "latest"))
    return resolve_checkpoint((p / "checkpoints").string());
  return resolve_checkpoint(path);
}

// The first `chars` characters of a sample: bytes as text (token 0, the end of a document: "⏎"),
// control characters escaped; token ids for another vocabulary.
std::string preview(const data::TokenSource& src, const data::SampleSpan& sp, bool bytes, size_t chars) {
  const int64_t n = std::min<int64_t>(sp.length, static_cast<int64_t>(chars));
  std::vector<int32_t> tok(static_cast<size_t>(n));
  src.read(sp.begin, n, tok.data());
  std::string out;
  for (int32_t t : tok) {
    if (!bytes) out += fmt::format("{} ", t);
    else if (t == 0) out += "⏎";
    else if (t == '\n') out += "\\n";
    else if (t == '\t') out += "\\t";
    else if (t < 0x20 || t == 0x7f) out += fmt::format("\\x{:02x}", t);
    else out += static_cast<char>(t);
  }
  // cut at a character boundary (a UTF-8 sequence broken by the length limit)
  while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
  if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
  return out;
}

}  // namespace

int run_data_report(const DataReportOptions& opts) {
  if (opts.top < 0) throw_usage("data-report: --top must be >= 0, got {}", opts.top);
  const std::string folder = checkpoint_folder(opts.checkpoint);
  const core::ExperimentConfig cfg = load_checkpoint_config(folder).first;
  if (cfg.data.sample != core::SampleUnit::document)
    throw_usage("data-report: {} is of a run with data.sample: window, which keeps no per-sample statistics; "
                "train with data.sample: document", folder);
  const data::DataState state = load_data_state(folder);
  std::vector<std::unique_ptr<data::TokenSource>> sources;
  std::vector<const data::TokenSource*> raw;
  for (const auto& src : cfg.data.train.items) {
    sources.push_back(data::open_token_source(src.path, "train"));
    raw.push_back(sources.back().get());
  }
  const data::SampleIndex index(raw, cfg.train.seq_len);
  data::SampleStats stats(index.size(), cfg.data);
  stats.from_table(state.table, (fs::path(folder) / kDataStateFile).string());
  const int64_t S = index.size();
  std::vector<data::SampleScore> scores(static_cast<size_t>(S));
  int64_t visited = 0, noisy = 0, hard = 0;
  for (int64_t s = 0; s < S; ++s) {
    scores[static_cast<size_t>(s)] = stats.score(s, state.steps);
    const auto& sc = scores[static_cast<size_t>(s)];
    visited += sc.visits > 0;
    noisy += sc.noisy;
    hard += sc.hard;
  }
  const bool bytes = cfg.model.vocab_size == 256;
  fmt::print("{} (step {}): {} samples from {} file(s), {} visited at least once\n", folder, state.steps, S,
             raw.size(), visited);
  fmt::print("flagged noisy: {} ({:.2f}%), hard: {} ({:.2f}%)  [data.noise.enabled {}, data.mining.enabled {}]\n",
             noisy, 100.0 * static_cast<double>(noisy) / static_cast<double>(S), hard,
             100.0 * static_cast<double>(hard) / static_cast<double>(S), cfg.data.noise.enabled,
             cfg.data.mining.enabled);
  std::vector<float> w;
  for (const auto& sc : scores) w.push_back(sc.draw_weight);
  std::sort(w.begin(), w.end());
  const auto q = [&](double f) { return w[static_cast<size_t>(f * static_cast<double>(w.size() - 1))]; };
  fmt::print("draw weights: min {:.3g}, 10% {:.3g}, median {:.3g}, 90% {:.3g}, max {:.3g}\n", q(0), q(0.1), q(0.5),
             q(0.9), q(1));
  // the excess loss ranks both lists: flat ones (noise), falling ones (hard)
  const auto list = [&](const char* title, auto keep) {
    std::vector<int64_t> ids;
    for (int64_t s = 0; s < S; ++s)
      if (keep(scores[static_cast<size_t>(s)])) ids.push_back(s);
    std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
      return scores[static_cast<size_t>(a)].excess > scores[static_cast<size_t>(b)].excess;
    });
    if (ids.size() > static_cast<size_t>(opts.top)) ids.resize(static_cast<size_t>(opts.top));
    fmt::print("\n{}\n{:>8} {:>12} {:>6} {:>7} {:>7} {:>7} {:>7}  preview\n", title, "sample", "file:doc", "visits",
               "first", "ema", "excess", "slope");
    for (int64_t s : ids) {
      const auto& sc = scores[static_cast<size_t>(s)];
      const data::SampleSpan sp = index.span(s);
      fmt::print("{:>8} {:>12} {:>6} {:>7.3f} {:>7.3f} {:>7.3f} {:>7.3f}  {}\n", s,
                 fmt::format("{}:{}", sp.source, index.document(s)), sc.visits, sc.first, sc.ema, sc.excess, sc.slope,
                 preview(*raw[static_cast<size_t>(sp.source)], sp, bytes, 60));
    }
  };
  const auto& nc = cfg.data.noise;
  const auto& mc = cfg.data.mining;
  list("most noisy (visited enough, excess loss high, not falling):", [&](const data::SampleScore& sc) {
    return sc.visits >= nc.min_visits && sc.slope > -nc.max_slope;
  });
  list("most hard (visited enough, excess loss high, still falling):", [&](const data::SampleScore& sc) {
    return sc.visits >= mc.min_visits && sc.slope <= 0 && !sc.noisy;
  });
  if (!opts.json.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t s = 0; s < S; ++s) {
      const auto& sc = scores[static_cast<size_t>(s)];
      const data::SampleSpan sp = index.span(s);
      rows.push_back({{"sample", s}, {"source", sp.source}, {"document", index.document(s)}, {"begin", sp.begin},
                      {"length", sp.length}, {"visits", sc.visits}, {"first", sc.first}, {"ema", sc.ema},
                      {"excess", sc.excess}, {"slope", sc.slope}, {"noisy", sc.noisy}, {"hard", sc.hard},
                      {"draw_weight", sc.draw_weight}, {"loss_weight", sc.loss_weight}});
    }
    std::ofstream f(opts.json);
    f << nlohmann::json{{"step", state.steps}, {"checkpoint", folder}, {"samples", rows}}.dump() << "\n";
    if (!f) throw_usage("data-report --json {}: cannot write it (folder missing or disk full?)", opts.json);
    fmt::print("\nevery sample's statistics: {}\n", opts.json);
  }
  return 0;
}

}  // namespace switchyard::launch
