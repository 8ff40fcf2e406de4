// The metrics.jsonl records built from a StepRecord and an EvalResult (launch/metrics.h).
#include <gtest/gtest.h>

#include "launch/evaluate.h"
#include "launch/metrics.h"

namespace switchyard::launch {
namespace {

StepRecord two_layers_of_two_experts() {
  StepRecord r;
  r.step = 3;
  r.loss = 2.5;
  r.tokens = 1000;
  r.seconds = 0.5;
  r.forward_s = 0.25;
  r.exchange.inter_node.bytes = 64;
  r.n_experts = 2;
  r.expert_counts = {3, 1, 0, 0};
  return r;
}

TEST(Metrics, StepRecord) {
  const nlohmann::json j = step_json(two_layers_of_two_experts());
  EXPECT_EQ(j["step"], 3);
  EXPECT_EQ(j["loss"], 2.5);
  EXPECT_EQ(j["tokens_per_s"], 2000.0);
  EXPECT_EQ(j["step_ms"], 500.0);
  EXPECT_EQ(j["forward_ms"], 250.0);
  EXPECT_EQ(j["exchange_bytes_inter"], 64);
  // fractions of each layer's routed slots; a layer without any: zeros
  EXPECT_EQ(j["expert_load"], nlohmann::json::parse("[[0.75, 0.25], [0.0, 0.0]]"));
  // balance per layer (launch/balance_metrics.h): the busiest ceil(0.6) = 1 expert, max/mean, std/mean;
  // zeros for the layer without tokens, never NaN (which JSON would write as null)
  EXPECT_EQ(j["busiest30_share"], nlohmann::json::parse("[0.75, 0.0]"));
  EXPECT_EQ(j["max_over_mean"], nlohmann::json::parse("[1.5, 0.0]"));
  EXPECT_EQ(j["load_cv"], nlohmann::json::parse("[0.5, 0.0]"));
  EXPECT_EQ(j.dump().find("null"), std::string::npos);
  for (const char* key : {"loss_scale", "skipped", "skipped_steps", "activation_mb", "mfu"})
    EXPECT_FALSE(j.contains(key)) << key;
}

TEST(Metrics, StepRecordWithLossScalingAndMemory) {
  StepRecord r = two_layers_of_two_experts();
  r.loss_scaling = true;
  r.loss_scale = 1024;
  r.skipped = true;
  r.skipped_steps = 2;
  r.memory = StepMemory{4, 5, 20};
  r.memory_peak_mb = 10;
  r.mfu = 0.25;
  const nlohmann::json j = step_json(r);
  EXPECT_EQ(j["loss_scale"], 1024.0);
  EXPECT_EQ(j["skipped"], true);
  EXPECT_EQ(j["skipped_steps"], 2);
  EXPECT_EQ(j["memory_peak_mb"], 10.0);
  EXPECT_EQ(j["mfu"], 0.25);
  EXPECT_EQ(j["activation_mb"], 4.0);
  EXPECT_EQ(j["activation_plan_mb"], 5.0);
  EXPECT_EQ(j["rss_peak_mb"], 20.0);
}

TEST(Metrics, DenseModelHasEmptyBalance) {
  StepRecord r = two_layers_of_two_experts();
  r.expert_counts.clear();
  const nlohmann::json j = step_json(r);
  for (const char* key : {"expert_load", "busiest30_share", "max_over_mean", "load_cv"})
    EXPECT_EQ(j[key], nlohmann::json::array()) << key;
}

TEST(Metrics, ProgressLineEndsWithTheBalanceSummary) {
  Progress p(10, 5);
  testing::internal::CaptureStdout();
  p.update(5, 2.5, 1e-3, 4100, 0.4, "busiest30 0.41 (worst 0.52) max/mean 1.80 (worst 2.31)");
  p.update(10, 2.0, 1e-3, 4100, 0.5);  // no MoE layer: no summary
  p.finish();
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("step 5/10 | loss 2.5000 | lr 1.00e-03 | 4.1k tok/s | ETA 2s | busiest30 0.41 (worst 0.52) "
                     "max/mean 1.80 (worst 2.31)"), std::string::npos) << out;
  EXPECT_NE(out.find("step 10/10 | loss 2.0000 | lr 1.00e-03 | 4.1k tok/s | ETA 0s"), std::string::npos) << out;
  EXPECT_EQ(out.find("ETA 0s |"), std::string::npos) << out;
}

TEST(Metrics, EvalRecord) {
  EvalResult e;
  e.loss = 3.25;
  e.tokens = 512;
  EXPECT_EQ(eval_json(7, e), nlohmann::json::parse(R"({"step": 7, "eval_loss": 3.25, "eval_tokens": 512})"));
}

}  // namespace
}  // namespace switchyard::launch
