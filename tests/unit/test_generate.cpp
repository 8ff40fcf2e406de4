// `switchyard generate` (launch/generate.h): the draws of sample_token (greedy, temperature, top-p,
// seeded), generate_tokens' context window against a plain argmax loop over full forwards,
// Model::decode (the KV cache) against forward()'s logits, and the usage errors of run_generate.
// Greedy tokens against PyTorch: tests/scripts/generate_greedy.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "launch/generate.h"
#include "tests/unit/testing.h"

namespace sy = switchyard;
using sy::launch::SamplingOptions;
using sy::launch::sample_token;

TEST(Generate, GreedyIsArgmaxTiesToLowerIndex) {
  const std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
  for (uint64_t step = 0; step < 5; ++step) EXPECT_EQ(sample_token(logits, {0.0, 1.0, 7}, step), 1);
}

TEST(Generate, TinyTopPKeepsTheMostProbableToken) {
  const std::vector<float> logits{0.1f, 0.3f, 0.2f, 0.25f};
  for (uint64_t step = 0; step < 200; ++step) EXPECT_EQ(sample_token(logits, {5.0, 1e-9, 3}, step), 1);
}

TEST(Generate, DrawsFollowTheTemperedSoftmaxAndTheSeed) {
  const std::vector<float> logits{1.0f, 0.0f, -0.5f, 2.0f};
  const double temperature = 0.7;
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] / temperature);
  const int n = 40000;
  std::vector<int> seen(logits.size(), 0);
  int differ = 0;
  for (int step = 0; step < n; ++step) {
    const int32_t t = sample_token(logits, {temperature, 1.0, 11}, step);
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 4);
    ++seen[t];
    EXPECT_EQ(t, sample_token(logits, {temperature, 1.0, 11}, step));  // a pure function of (seed, step)
    differ += t != sample_token(logits, {temperature, 1.0, 12}, step);
  }
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(seen[i] / double(n), p[i] / sum, 0.01) << "token " << i;
  EXPECT_GT(differ, n / 4);  // another seed, other draws
}

TEST(Generate, TopPCutsToTheNucleusAndRenormalises) {
  // probabilities 0.4 0.3 0.2 0.1 (temperature 1): top-p 0.6 keeps tokens 0 and 1, drawn 4:3
  const std::vector<float> logits{std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  const int n = 40000;
  int zero = 0;
  for (int step = 0; step < n; ++step) {
    const int32_t t = sample_token(logits, {1.0, 0.6, 5}, step);
    ASSERT_TRUE(t == 0 || t == 1) << "token " << t << " is outside the nucleus";
    zero += t == 0;
  }
  EXPECT_NEAR(zero / double(n), 4.0 / 7.0, 0.01);
}

// Greedy generate_tokens equals an argmax loop over full forwards of the last max_seq_len tokens,
// past the model's max_seq_len (16) too: the window slides.
TEST(Generate, GreedyFollowsFullForwardsThroughTheWindow) {
  for (const int64_t moe_layers : {0, 2}) {
    auto cfg = sy::test::small_moe_model(2);
    cfg.first_dense_layers = 2 - moe_layers;
    cfg.dense_ffn_size = 40;
    auto be = sy::test::test_backend();
    sy::moe::Model model(*be, cfg, 1, cfg.max_seq_len);
    model.init_random(42);
    const std::vector<int32_t> prompt{0, 5, 9, 33, 2};
    const int64_t max_new = 20;
    const auto g = sy::launch::generate_tokens(model, prompt, max_new, {0.0, 1.0, 0});
    std::vector<int32_t> ctx = prompt, want;
    for (int64_t i = 0; i < max_new; ++i) {
      const int64_t T = std::min<int64_t>(static_cast<int64_t>(ctx.size()), cfg.max_seq_len);
      std::vector<int32_t> targets(static_cast<size_t>(T), -1);
      model.forward(ctx.data() + ctx.size() - T, targets.data(), 1, T);
      const auto row = sy::test::to_host(*be, model.logits() + (T - 1) * cfg.vocab_size, cfg.vocab_size);
      const int32_t next = sample_token(row, {0.0, 1.0, 0}, 0);
      if (next == 0) break;
      want.push_back(next);
      ctx.push_back(next);
    }
    EXPECT_EQ(g.tokens, want) << moe_layers << " MoE layers";
    EXPECT_EQ(g.ended, static_cast<int64_t>(want.size()) < max_new);
    EXPECT_GT(static_cast<int64_t>(ctx.size()), cfg.max_seq_len) << "the test should pass the window";
  }
}

TEST(Generate, BadOptionsAreUsageErrors) {
  const auto with = [](auto change) {
    sy::launch::GenerateOptions o;
    o.init_from = "/nonexistent";
    o.prompt = "Hello";
    change(o);
    return sy::test::usage_error([&] { sy::launch::run_generate(o); });
  };
  EXPECT_NE(with([](auto& o) { o.prompt.clear(); }).find("--prompt"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.max_new_tokens = 0; }).find("--max-new-tokens"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.temperature = -0.5; }).find("--temperature"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.temperature = NAN; }).find("--temperature"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.top_p = 0; }).find("--top-p"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.top_p = 1.5; }).find("--top-p"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.checkpoint = "/also"; }).find("exactly one"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.init_from.clear(); }).find("exactly one"), std::string::npos);
}

// Model::decode (the KV cache) gives the logits of forward() over the whole sequence at every
// position: a prompt of 5 tokens in one pass, then one token at a time, for a dense and an MoE
// model (Mixtral layout and Qwen2 layout: q/k/v biases, a shared expert). The GEMMs run on other
// row counts, so rounding differs: the error is max |difference| over the row's largest |logit|.
TEST(Generate, DecodeEqualsTheFullForward) {
  const auto error = [](const std::vector<float>& got, const float* want, int64_t n) {
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      diff = std::max(diff, std::abs(static_cast<double>(got[i]) - want[i]));
      scale = std::max(scale, std::abs(static_cast<double>(want[i])));
    }
    return std::isfinite(diff) ? diff / scale : 1.0;
  };
  for (const int variant : {0, 1, 2}) {
    auto cfg = sy::test::small_moe_model(2);
    if (variant == 0) {
      cfg.first_dense_layers = 2;
      cfg.dense_ffn_size = 40;
    } else if (variant == 2) {
      cfg.qkv_bias = true;
      cfg.moe.shared_expert_size = 16;
      cfg.first_dense_layers = 1;
      cfg.dense_ffn_size = 40;
    }
    auto be = sy::test::test_backend();
    sy::moe::Model model(*be, cfg, 1, cfg.max_seq_len);
    model.init_random(7 + variant);
    const int64_t T = cfg.max_seq_len, V = cfg.vocab_size, prompt = 5;
    std::vector<int32_t> tokens(static_cast<size_t>(T)), targets(static_cast<size_t>(T), -1);
    for (int64_t t = 0; t < T; ++t) tokens[t] = static_cast<int32_t>((t * 37 + 11) % V);
    model.forward(tokens.data(), targets.data(), 1, T);
    const auto full = sy::test::to_host(*be, model.logits(), T * V);
    model.decode_reset();
    model.decode(tokens.data(), prompt);
    ASSERT_EQ(model.logits_rows(), prompt);
    auto got = sy::test::to_host(*be, model.logits(), prompt * V);
    EXPECT_LT(error(got, full.data(), prompt * V), 1e-5) << "variant " << variant << " prefill";
    for (int64_t t = prompt; t < T; ++t) {
      model.decode(tokens.data() + t, 1);
      got = sy::test::to_host(*be, model.logits(), V);
      EXPECT_LT(error(got, full.data() + t * V, V), 1e-5) << "variant " << variant << " position " << t;
    }
    EXPECT_EQ(model.decode_length(), T);
    EXPECT_FALSE(sy::test::internal_error([&] { model.decode(tokens.data(), 1); }).empty());  // full
  }
}
