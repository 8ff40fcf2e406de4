// tests/unit/test_capacity.cpp: expert capacity (moe/capacity.h). The drop rule against a
// brute-force reading of its definition (every ordered pair compared), capacity never exceeded,
// the margin score by hand, and the whole model: a capacity no expert reaches is bit-identical to
// dropless routing, dropping never touches the router's own choice (counts, aux loss), and the
// config keys. The golden cases capacity_position/gate/margin (test_golden.cpp) check loss, kept
// set and every gradient against the PyTorch reference; test_expert_parallel_model.cpp checks
// expert parallelism against one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/error.h"
#include "moe/capacity.h"
#include "moe/model.h"
#include "tests/unit/testing.h"

namespace sy = switchyard;
using sy::core::DropPolicy;

namespace {

// Slot s is kept iff fewer than cap slots of its expert come before it in the policy's order
// (position: smaller slot; importance: larger importance, or equal and smaller slot).
std::vector<int32_t> brute_force(const std::vector<int32_t>& idx, const std::vector<float>& imp, int64_t cap,
                                 DropPolicy policy) {
  std::vector<int32_t> out = idx;
  for (size_t s = 0; s < idx.size(); ++s) {
    if (idx[s] < 0) continue;
    int64_t ahead = 0;
    for (size_t o = 0; o < idx.size(); ++o) {
      if (o == s || idx[o] != idx[s]) continue;
      const bool before = policy == DropPolicy::position ? o < s : imp[o] > imp[s] || (imp[o] == imp[s] && o < s);
      ahead += before;
    }
    if (ahead >= cap) out[s] = -1;
  }
  return out;
}

TEST(Capacity, DropRuleMatchesItsDefinition) {
  std::mt19937 rng(5);
  for (const DropPolicy policy : {DropPolicy::position, DropPolicy::importance}) {
    for (int trial = 0; trial < 40; ++trial) {
      const int64_t E = 1 + trial % 7, S = 1 + (trial * 13) % 97, cap = trial % 9;
      std::vector<int32_t> idx(static_cast<size_t>(S));
      std::vector<float> imp(idx.size());
      for (size_t s = 0; s < idx.size(); ++s) {
        idx[s] = static_cast<int32_t>(rng() % static_cast<uint32_t>(E + 1)) - 1;  // some -1: not routed
        imp[s] = static_cast<float>(rng() % 5) * 0.25f;                            // many ties
      }
      const auto want = brute_force(idx, imp, cap, policy);
      auto got = idx;
      const int64_t dropped = sy::moe::drop_over_capacity(got.data(), imp.data(), S, E, cap, policy);
      EXPECT_EQ(got, want) << "trial " << trial;
      int64_t want_dropped = 0;
      std::vector<int64_t> load(static_cast<size_t>(E), 0);
      for (size_t s = 0; s < idx.size(); ++s) {
        want_dropped += idx[s] >= 0 && want[s] < 0;
        if (got[s] >= 0) ++load[static_cast<size_t>(got[s])];
      }
      EXPECT_EQ(dropped, want_dropped);
      for (const int64_t l : load) EXPECT_LE(l, cap);  // capacity is never exceeded
    }
  }
}

TEST(Capacity, CapacityFormula) {
  sy::moe::CapacityRule r{1.25, 4, DropPolicy::position, sy::core::ImportanceScore::gate};
  EXPECT_EQ(sy::moe::expert_capacity(r, 100, 2, 16), 16);  // ceil(1.25 * 200 / 16) = ceil(15.6)
  EXPECT_EQ(sy::moe::expert_capacity(r, 8, 2, 16), 4);     // min_capacity
  r.factor = 1.0;
  EXPECT_EQ(sy::moe::expert_capacity(r, 64, 2, 16), 8);  // exactly balanced
}

TEST(Capacity, ImportanceScores) {
  const int64_t E = 4, K = 2;
  const std::vector<float> probs = {0.1f, 0.5f, 0.3f, 0.1f,    // margin 0.5 - 0.1 = 0.4
                                    0.25f, 0.25f, 0.3f, 0.2f};  // margin 0.3 - 0.25 = 0.05
  const std::vector<int32_t> idx = {1, 2, 2, 0};
  std::vector<float> out(4);
  sy::moe::slot_importance(out.data(), probs.data(), idx.data(), 2, E, K, sy::core::ImportanceScore::gate);
  EXPECT_EQ(out, (std::vector<float>{0.5f, 0.3f, 0.3f, 0.25f}));
  sy::moe::slot_importance(out.data(), probs.data(), idx.data(), 2, E, K, sy::core::ImportanceScore::margin);
  EXPECT_FLOAT_EQ(out[0], 0.4f);
  EXPECT_FLOAT_EQ(out[1], 0.4f);
  EXPECT_FLOAT_EQ(out[2], 0.05f);
  EXPECT_FLOAT_EQ(out[3], 0.05f);
  // K = E: the (K+1)-th score is 0
  sy::moe::slot_importance(out.data(), probs.data(), std::vector<int32_t>{1, 2, 0, 3, 2, 0, 1, 3}.data(), 1, E, 4,
                           sy::core::ImportanceScore::margin);
  EXPECT_FLOAT_EQ(out[0], 0.5f);
}

struct ModelRun {
  std::vector<float> grads;
  double loss = 0, aux = 0;
  std::vector<std::vector<int64_t>> counts;
  std::vector<sy::moe::MoeStats> stats;
};

ModelRun run_model(const sy::core::ModelConfig& cfg, sy::core::Recompute recompute = sy::core::Recompute::none) {
  auto be = sy::core::make_cpu_backend(1);
  const int64_t B = 2, T = 16;
  sy::moe::ModelOptions opts;
  opts.recompute = recompute;
  sy::moe::Model m(*be, cfg, B, T, {}, opts);
  m.init_random(3);
  std::vector<int32_t> tok(static_cast<size_t>(B * T)), tgt(tok.size());
  for (size_t i = 0; i < tok.size(); ++i) {
    tok[i] = static_cast<int32_t>((i * 2654435761u >> 7) % 64);
    tgt[i] = static_cast<int32_t>((i * 40503u + 11) % 64);
  }
  ModelRun r;
  const auto f = m.forward(tok.data(), tgt.data(), B, T);
  r.loss = f.loss;
  r.aux = f.aux;
  m.zero_grads();
  m.backward();
  r.grads.resize(static_cast<size_t>(m.num_params()));
  be->copy_to_host(r.grads.data(), m.grads(), r.grads.size() * sizeof(float));
  r.counts = m.expert_counts();
  for (int64_t l = 0; l < m.num_moe_layers(); ++l) r.stats.push_back(m.moe_stats(l));
  return r;
}

sy::core::ModelConfig model_with(double factor, DropPolicy policy) {
  auto c = sy::test::small_moe_model(2);
  c.moe.aux_loss_coef = 0.01;
  c.moe.router.capacity_factor = factor;
  c.moe.router.min_capacity = 1;
  c.moe.router.drop_policy = policy;
  return c;
}

TEST(Capacity, UnreachedCapacityIsBitIdenticalToDropless) {
  const ModelRun dropless = run_model(model_with(0, DropPolicy::position));
  for (const DropPolicy p : {DropPolicy::position, DropPolicy::importance}) {
    const ModelRun big = run_model(model_with(2.0 /* E / K: every slot fits */, p));
    EXPECT_EQ(0, std::memcmp(big.grads.data(), dropless.grads.data(), big.grads.size() * sizeof(float)));
    EXPECT_EQ(big.loss, dropless.loss);
    for (const auto& s : big.stats) EXPECT_EQ(s.dropped, 0);
    for (const auto& s : dropless.stats) EXPECT_TRUE(s.kept.empty());  // capacity off: nothing runs
  }
}

TEST(Capacity, DropsChangeTheOutputNotTheRoutersChoice) {
  const ModelRun dropless = run_model(model_with(0, DropPolicy::position));
  for (const DropPolicy p : {DropPolicy::position, DropPolicy::importance}) {
    const ModelRun tight = run_model(model_with(0.5, p));
    EXPECT_EQ(tight.counts[0], dropless.counts[0]);  // the router's choice (the first layer's input is the same)
    int64_t dropped = 0;
    for (const auto& s : tight.stats) {
      dropped += s.dropped;
      EXPECT_EQ(s.capacity, 8);  // ceil(0.5 * 32 * 2 / 4)
      std::vector<int64_t> load(4, 0);
      for (const int32_t e : s.kept)
        if (e >= 0) ++load[static_cast<size_t>(e)];
      for (const int64_t l : load) EXPECT_LE(l, s.capacity);
      EXPECT_EQ(s.routed - s.dropped, std::count_if(s.kept.begin(), s.kept.end(), [](int32_t e) { return e >= 0; }));
    }
    EXPECT_GT(dropped, 0);
    EXPECT_NE(tight.loss, dropless.loss);
  }
}

// Activation checkpointing replays the forward's kept set (the `kept` plan buffer is always
// kept): full and selective recomputation give the gradients of none, bit for bit.
TEST(Capacity, CheckpointingReplaysTheDrops) {
  for (const DropPolicy p : {DropPolicy::position, DropPolicy::importance}) {
    const ModelRun none = run_model(model_with(0.5, p));
    for (const auto r : {sy::core::Recompute::full, sy::core::Recompute::selective}) {
      const ModelRun got = run_model(model_with(0.5, p), r);
      EXPECT_EQ(0, std::memcmp(got.grads.data(), none.grads.data(), got.grads.size() * sizeof(float)))
          << sy::core::name_of(r);
      EXPECT_EQ(got.loss, none.loss);
      for (size_t l = 0; l < got.stats.size(); ++l) EXPECT_EQ(got.stats[l].kept, none.stats[l].kept);
    }
  }
}

TEST(Capacity, ConfigKeys) {
  const auto cfg = sy::core::parse_experiment_config(
      "model:\n  moe:\n    router:\n      capacity_factor: 1.25\n      min_capacity: 2\n"
      "      drop_policy: importance\n      importance: margin\n",
      "test.yaml");
  EXPECT_EQ(cfg.model.moe.router.capacity_factor, 1.25);
  EXPECT_EQ(cfg.model.moe.router.min_capacity, 2);
  EXPECT_EQ(cfg.model.moe.router.drop_policy, DropPolicy::importance);
  EXPECT_EQ(cfg.model.moe.router.importance, sy::core::ImportanceScore::margin);
  for (const char* bad : {"capacity_factor: -1", "min_capacity: -2", "drop_policy: random", "importance: loss"}) {
    try {
      sy::core::parse_experiment_config(std::string("model:\n  moe:\n    router:\n      ") + bad + "\n", "test.yaml");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const sy::Error& e) {
      EXPECT_EQ(e.kind(), sy::ErrorKind::usage) << bad;
      const std::string key = std::string("model.moe.router.") + std::string(bad).substr(0, std::string(bad).find(':'));
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
}

}  // namespace
