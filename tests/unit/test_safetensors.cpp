// tests/unit/test_safetensors.cpp: fp16/bf16 conversions, the safetensors writer/reader (round
// trips, corrupted files), Hugging Face config.json parsing (mixtral, qwen2_moe) and weight
// loading (single file, sharded index, missing / misshapen / unknown tensors).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"
#include "core/half.h"
#include "core/params.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;


using test::usage_error;

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// ---------------------------------------------------------------- half.h

TEST(Half, Fp16KnownValues) {
  using core::f16_to_f32;
  using core::f32_to_f16;
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway: ties to even -> inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // halfway to 0: ties to even
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: ties to even (2)
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);  // 2.5 units: ties to even (2)
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0); a bit more rounds up
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  const uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(f16_to_f32(nan)));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  static_assert(core::f32_to_f16(1.0f) == 0x3c00 && core::f16_to_f32(0x3c00) == 1.0f);
}

TEST(Half, Fp16AllValuesRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = core::f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(core::f16_to_f32(core::f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(core::f32_to_f16(f), h) << "half bits " << h;
  }
}

TEST(Half, Fp16RoundingMatchesDoubleReference) {
  // Nearest-even against a reference built on the exact values of neighbouring halves.
  std::vector<float> xs = test::randn(20000, 7, 100.0f);
  for (float& x : test::randn(20000, 8, 1e-5f)) xs.push_back(x);  // subnormal range
  for (float x : xs) {
    const uint16_t h = core::f32_to_f16(x);
    const double r = core::f16_to_f32(h);
    // neighbours of h (same sign)
    const double up = core::f16_to_f32(static_cast<uint16_t>(h + 1));
    const double dn = (h & 0x7fff) ? core::f16_to_f32(static_cast<uint16_t>(h - 1)) : -r;
    const double err = std::abs(static_cast<double>(x) - r);
    ASSERT_LE(err, std::abs(static_cast<double>(x) - up)) << x;
    ASSERT_LE(err, std::abs(static_cast<double>(x) - dn)) << x;
  }
}

TEST(Half, Bf16) {
  using core::bf16_to_f32;
  using core::f32_to_bf16;
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-1.0f), 0xbf80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even; a bit more rounds up
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  const uint16_t nan = f32_to_bf16(std::bit_cast<float>(0x7f800001u));  // payload in low bits only
  EXPECT_TRUE(std::isnan(bf16_to_f32(nan)));
  EXPECT_EQ(bits(bf16_to_f32(0x4049)), 0x40490000u);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), h);
    }
  }
}

// ---------------------------------------------------------------- safetensors files

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

// A file with this header (dumped as is) and `data_bytes` zero bytes of data.
void write_raw(const fs::path& p, const std::string& header, size_t data_bytes,
               int64_t header_size = -1) {
  std::string s(8, '\0');
  const uint64_t n = header_size >= 0 ? static_cast<uint64_t>(header_size) : header.size();
  std::memcpy(s.data(), &n, 8);
  s += header;
  s += std::string(data_bytes, '\0');
  write_bytes(p, s);
}

TEST(Safetensors, RoundTripF32Bf16F16) {
  auto dir = test::temp_dir("Safetensors_RoundTrip");
  const fs::path path = dir / "t.safetensors";
  std::vector<float> a = test::randn(6, 1);
  std::vector<float> b = test::randn(35, 2);
  std::vector<float> c = test::randn(4, 3);
  std::vector<uint16_t> b16(b.size()), c16(c.size());
  core::f32_to_bf16(b.data(), b16.data(), b.size());
  core::f32_to_f16(c.data(), c16.data(), c.size());
  std::vector<double> d = {1.5, -2.25, 1e-3};
  core::formats::write_safetensors(path.string(),
                          {{"a.weight", "F32", {2, 3}, a.data()},
                           {"b", "BF16", {5, 7}, b16.data()},   // 70 bytes: next offset unaligned
                           {"c", "F16", {4}, c16.data()},
                           {"d", "F64", {3}, d.data()},
                           {"empty", "F32", {0, 4}, nullptr}},
                          {{"format", "pt"}, {"note", "x"}});
  // no temporary left behind; header padded to a multiple of 8
  for (auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename(), "t.safetensors");
  const std::string raw = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 24 + 70 + 8 + 24);
  EXPECT_EQ(raw[8], '{');

  core::formats::SafetensorsFile f(path.string());
  EXPECT_EQ(f.path(), path.string());
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.tensors()[0].name, "a.weight");  // data order
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x");
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_HAS(usage_error([&] { f.at("nope"); }), path.string() + ": no tensor named 'nope'");

  const core::formats::TensorView& ta = f.at("a.weight");
  EXPECT_EQ(ta.dtype, "F32");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.numel(), 6);
  EXPECT_EQ(ta.nbytes, 24u);
  std::vector<float> out(6);
  core::formats::to_f32(ta, out.data());
  EXPECT_EQ(out, a);

  const core::formats::TensorView& tb = f.at("b");
  EXPECT_EQ(tb.dtype, "BF16");
  out.resize(35);
  core::formats::to_f32(tb, out.data());
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(out[i], core::bf16_to_f32(b16[i]));
    EXPECT_NEAR(out[i], b[i], std::abs(b[i]) * (1.0 / 256) + 1e-30);
  }
  const core::formats::TensorView& tc = f.at("c");
  out.resize(4);
  core::formats::to_f32(tc, out.data());
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(out[i], core::f16_to_f32(c16[i]));
    EXPECT_NEAR(out[i], c[i], std::abs(c[i]) * (1.0 / 2048) + 1e-7);
  }
  out.resize(3);
  core::formats::to_f32(f.at("d"), out.data());
  EXPECT_EQ(out, (std::vector<float>{1.5f, -2.25f, 1e-3f}));
  EXPECT_EQ(f.at("empty").numel(), 0);

  // Overwriting an existing file works (rename over it), and moving the reader keeps views valid.
  std::vector<int32_t> ints = {1, 2, 3};
  core::formats::write_safetensors(path.string(), {{"i", "I32", {3}, ints.data()}});
  core::formats::SafetensorsFile g(path.string());
  core::formats::SafetensorsFile moved = std::move(g);
  EXPECT_TRUE(moved.metadata().empty());
  int32_t back[3];
  std::memcpy(back, moved.at("i").data, 12);
  EXPECT_EQ(back[2], 3);
  EXPECT_HAS(usage_error([&] { core::formats::to_f32(moved.at("i"), out.data()); }),
             path.string() + ": tensor 'i' has dtype I32, which cannot be converted");
}

TEST(Safetensors, WriterFailureIsUsageError) {
  auto dir = test::temp_dir("Safetensors_WriterFailure");
  std::vector<float> a(2);
  const std::string p = (dir / "no-such-dir" / "x.safetensors").string();
  EXPECT_HAS(usage_error([&] { core::formats::write_safetensors(p, {{"a", "F32", {2}, a.data()}}); }), p);
}

TEST(Safetensors, CorruptedFiles) {
  auto dir = test::temp_dir("Safetensors_Corrupted");
  const fs::path good = dir / "good.safetensors";
  std::vector<float> a = test::randn(8, 1), b = test::randn(4, 2);
  core::formats::write_safetensors(good.string(), {{"a", "F32", {8}, a.data()}, {"b", "F32", {4}, b.data()}});
  const std::string raw = read_bytes(good);
  const fs::path p = dir / "bad.safetensors";
  const std::string ps = p.string();
  auto open = [&] { core::formats::SafetensorsFile f(ps); };
  // a file of `header` and `data_bytes` zero bytes (header size field: `header_size`, else the
  // header's length) fails to open with "<file>: <message>"
  auto rejects = [&](const std::string& header, size_t data_bytes, const std::string& message,
                     int64_t header_size = -1) {
    write_raw(p, header, data_bytes, header_size);
    EXPECT_HAS(usage_error(open), ps + message);
  };

  // missing file
  EXPECT_HAS(usage_error([&] { core::formats::SafetensorsFile f((dir / "none.safetensors").string()); }),
             (dir / "none.safetensors").string() + ": cannot open");
  // truncated: data cut short
  write_bytes(p, raw.substr(0, raw.size() - 4));
  EXPECT_HAS(usage_error(open), ps + ": tensor 'b': data_offsets [32, 48] run past the end");
  // truncated inside the header
  write_bytes(p, raw.substr(0, 20));
  EXPECT_HAS(usage_error(open), ps + ": header size");
  EXPECT_HAS(usage_error(open), "runs past the end");
  // shorter than the size field
  write_bytes(p, raw.substr(0, 5));
  EXPECT_HAS(usage_error(open), ps + ": 5 bytes is too small");
  // trailing garbage
  write_bytes(p, raw + "xx");
  EXPECT_HAS(usage_error(open), ps + ": the tensors hold 48 bytes but the file has 50 bytes");
  // absurd header length
  rejects("{}", 0, ": header size 1099511627776 is larger than 100 MB", int64_t(1) << 40);
  // header length pointing into the data: the JSON is cut / followed by bytes
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, ": the 10-byte JSON header is invalid", 10);
  // overlapping offsets
  rejects(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12, ": tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a'");
  // gap
  rejects(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
          20, ": gap in the data: bytes [8, 12) before tensor 'b'");
  // not starting at 0
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, ": gap in the data: bytes [0, 4)");
  // wrong size for the dtype
  rejects(R"({"a":{"dtype":"BF16","shape":[2, 2],"data_offsets":[0,16]}})", 16,
          ": tensor 'a': data_offsets [0, 16] hold 16 bytes but dtype BF16 with shape [2, 2] needs 8");
  // unknown dtype
  rejects(R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4, ": tensor 'a': unknown dtype 'F12'");
  // negative / fractional shape
  rejects(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, ": tensor 'a': shape [-1] has an entry");
  // duplicate names
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
          R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          8, ": tensor 'a' appears twice");
  // not JSON / not an object / bad entries
  rejects("not json", 0, ": the 8-byte JSON header is invalid");
  rejects("[1, 2]  ", 0, ": the JSON header is not an object");
  rejects(R"({"a":{"dtype":"F32","shape":[1]}})", 0,
          ": tensor 'a': expected an object with dtype, shape and data_offsets");
  rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4,
          ": tensor 'a': data_offsets [4, 0] end before they begin");
  rejects(R"({"__metadata__":{"k":1}})", 0, ": __metadata__ value of 'k' is not a string");
  // an empty file with only metadata is valid
  write_raw(p, R"({"__metadata__":{"k":"v"}})", 0);
  core::formats::SafetensorsFile ok(ps);
  EXPECT_TRUE(ok.tensors().empty());
  EXPECT_EQ(ok.metadata().at("k"), "v");
}

// ---------------------------------------------------------------- Hugging Face checkpoints

void write_json(const fs::path& p, const json& j) { write_bytes(p, j.dump(2)); }

json mixtral_json() {
  return json{{"architectures", {"MixtralForCausalLM"}},
              {"model_type", "mixtral"},
              {"hidden_size", 32},
              {"intermediate_size", 24},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"vocab_size", 50},
              {"max_position_embeddings", 128},
              {"rope_theta", 1000000.0},
              {"rms_norm_eps", 1e-5},
              {"num_local_experts", 4},
              {"num_experts_per_tok", 2},
              {"router_aux_loss_coef", 0.02},
              {"tie_word_embeddings", false},
              {"hidden_act", "silu"},
              {"sliding_window", nullptr},
              {"torch_dtype", "bfloat16"}};
}

json qwen_json() {
  return json{{"architectures", {"Qwen2MoeForCausalLM"}},
              {"model_type", "qwen2_moe"},
              {"hidden_size", 16},
              {"intermediate_size", 20},
              {"moe_intermediate_size", 8},
              {"shared_expert_intermediate_size", 12},
              {"num_hidden_layers", 3},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"vocab_size", 32},
              {"max_position_embeddings", 64},
              {"rope_theta", 10000.0},
              {"rms_norm_eps", 1e-6},
              {"num_experts", 4},
              {"num_experts_per_tok", 2},
              {"norm_topk_prob", false},
              {"decoder_sparse_step", 1},
              {"mlp_only_layers", {0}},
              {"router_aux_loss_coef", 0.001},
              {"tie_word_embeddings", false},
              {"use_sliding_window", false}};
}

TEST(HfConfig, Mixtral) {
  auto dir = test::temp_dir("HfConfig_Mixtral");
  write_json(dir / "config.json", mixtral_json());
  core::ModelConfig m = core::formats::read_hf_config(dir.string());
  EXPECT_EQ(m.d_model, 32);
  EXPECT_EQ(m.moe.expert_size, 24);
  EXPECT_EQ(m.n_layers, 2);
  EXPECT_EQ(m.n_heads, 4);
  EXPECT_EQ(m.n_kv_heads, 2);
  EXPECT_EQ(m.head_dim, 0);
  EXPECT_EQ(m.hd(), 8);
  EXPECT_EQ(m.vocab_size, 50);
  EXPECT_EQ(m.max_seq_len, 128);
  EXPECT_DOUBLE_EQ(m.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-5);
  EXPECT_EQ(m.moe.n_experts, 4);
  EXPECT_EQ(m.moe.top_k, 2);
  EXPECT_DOUBLE_EQ(m.moe.aux_loss_coef, 0.02);
  EXPECT_TRUE(m.moe.normalize_topk);
  EXPECT_EQ(m.moe.shared_expert_size, 0);
  EXPECT_FALSE(m.qkv_bias);
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_EQ(m.first_dense_layers, 0);
  EXPECT_FALSE(m.qwen_layout());

  json j = mixtral_json();
  j["head_dim"] = 16;
  j["sliding_window"] = 100;
  j["tie_word_embeddings"] = true;
  j.erase("num_key_value_heads");
  write_json(dir / "config.json", j);
  m = core::formats::read_hf_config(dir.string());
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_EQ(m.n_kv_heads, 4);  // defaults to num_attention_heads
  EXPECT_EQ(m.max_seq_len, 100);
  EXPECT_TRUE(m.tie_embeddings);
}

TEST(HfConfig, Qwen2Moe) {
  auto dir = test::temp_dir("HfConfig_Qwen2Moe");
  write_json(dir / "config.json", qwen_json());
  core::ModelConfig m = core::formats::read_hf_config(dir.string());
  EXPECT_EQ(m.d_model, 16);
  EXPECT_EQ(m.moe.expert_size, 8);
  EXPECT_EQ(m.moe.shared_expert_size, 12);
  EXPECT_EQ(m.dense_ffn_size, 20);
  EXPECT_EQ(m.n_layers, 3);
  EXPECT_EQ(m.first_dense_layers, 1);
  EXPECT_EQ(m.moe.n_experts, 4);
  EXPECT_FALSE(m.moe.normalize_topk);
  EXPECT_TRUE(m.qkv_bias);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(m.moe.aux_loss_coef, 0.001);
  EXPECT_TRUE(m.qwen_layout());

  json j = qwen_json();
  j["shared_expert_intermediate_size"] = 0;
  j["mlp_only_layers"] = json::array();
  j["norm_topk_prob"] = true;
  write_json(dir / "config.json", j);
  m = core::formats::read_hf_config(dir.string());
  EXPECT_EQ(m.moe.shared_expert_size, 0);
  EXPECT_EQ(m.first_dense_layers, 0);
  EXPECT_TRUE(m.moe.normalize_topk);
  EXPECT_TRUE(m.qwen_layout());  // qkv_bias keeps the qwen names

  j.erase("norm_topk_prob");  // transformers' default: false
  j["mlp_only_layers"] = {1, 0};  // any order
  write_json(dir / "config.json", j);
  m = core::formats::read_hf_config(dir.string());
  EXPECT_FALSE(m.moe.normalize_topk);
  EXPECT_EQ(m.first_dense_layers, 2);
}

TEST(HfConfig, Errors) {
  auto dir = test::temp_dir("HfConfig_Errors");
  const std::string file = (dir / "config.json").string();
  auto read = [&] { core::formats::read_hf_config(dir.string()); };
  EXPECT_HAS(usage_error(read), file + ": not found");

  auto expect_error = [&](json j, const std::string& part) {
    write_json(dir / "config.json", j);
    EXPECT_HAS(usage_error(read), file + ": " + part);
  };
  json j = qwen_json();
  j["model_type"] = "llama";
  expect_error(j, "model_type 'llama' is not supported (supported: mixtral, qwen2_moe)");
  j = qwen_json();
  j["decoder_sparse_step"] = 2;
  expect_error(j, "decoder_sparse_step = 2 is not supported");
  j = qwen_json();
  j["mlp_only_layers"] = {1};
  expect_error(j, "mlp_only_layers [1] is not supported");
  j = qwen_json();
  j["mlp_only_layers"] = {0, 2};
  expect_error(j, "mlp_only_layers [0,2] is not supported");
  j = qwen_json();
  j.erase("num_experts");
  expect_error(j, "missing key 'num_experts'");
  j = mixtral_json();
  j["hidden_size"] = "32";
  expect_error(j, "key 'hidden_size' must be an integer");
  j = mixtral_json();
  j["num_experts_per_tok"] = 5;
  expect_error(j, "model.moe.top_k: must be in [1, model.moe.n_experts = 4], got 5");
  j = mixtral_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  expect_error(j, "rope_scaling");
  j = mixtral_json();
  j["hidden_act"] = "gelu";
  expect_error(j, "hidden_act \"gelu\" is not supported");
  write_bytes(dir / "config.json", "{ not json");
  EXPECT_HAS(usage_error(read), file + ": invalid JSON");
}

// Random weights for every tensor of `t`, as f32 (and what a bf16 file gives back).
std::vector<float> random_params(const core::ParamTable& t, uint64_t seed) {
  return test::randn(t.total(), seed, 0.5f);
}

// Writes `names` of the table as one safetensors file; even-indexed tensors in BF16 (so the
// expected values are the bf16-rounded ones, stored back into `expected`).
void write_shard(const fs::path& p, const core::ParamTable& t, const std::vector<std::string>& names,
                 std::vector<float>& expected, const std::vector<core::formats::TensorWrite>& extra = {}) {
  std::vector<std::vector<uint16_t>> keep;
  std::vector<core::formats::TensorWrite> w;
  keep.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const core::ParamSpec& s = t.at(names[i]);
    float* v = expected.data() + s.offset;
    if (i % 2 == 0) {
      keep.emplace_back(static_cast<size_t>(s.numel));
      core::f32_to_bf16(v, keep.back().data(), keep.back().size());
      core::bf16_to_f32(keep.back().data(), v, keep.back().size());
      w.push_back({s.name, "BF16", s.shape, keep.back().data()});
    } else {
      w.push_back({s.name, "F32", s.shape, v});
    }
  }
  for (const auto& e : extra) w.push_back(e);
  core::formats::write_safetensors(p.string(), w, {{"format", "pt"}});
}

std::vector<std::string> names_of(const core::ParamTable& t) {
  std::vector<std::string> n;
  for (const auto& s : t.specs()) n.push_back(s.name);
  return n;
}

TEST(HfWeights, SingleFileMixtral) {
  auto dir = test::temp_dir("HfWeights_SingleFileMixtral");
  write_json(dir / "config.json", mixtral_json());
  const core::ModelConfig m = core::formats::read_hf_config(dir.string());
  const core::ParamTable t = core::make_param_table(m);
  ASSERT_GE(t.find("model.layers.1.block_sparse_moe.experts.3.w2.weight"), 0);
  std::vector<float> expected = random_params(t, 11);
  std::vector<float> inv_freq(4, 1.0f);
  write_shard(dir / "model.safetensors", t, names_of(t), expected,
              {{"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {4}, inv_freq.data()}});
  std::vector<float> got(static_cast<size_t>(t.total()), -1.0f);
  core::formats::load_hf_weights(dir.string(), t, got.data());
  EXPECT_EQ(got, expected);
}

TEST(HfWeights, ShardedQwenWithErrors) {
  auto dir = test::temp_dir("HfWeights_Sharded");
  write_json(dir / "config.json", qwen_json());
  const core::ModelConfig m = core::formats::read_hf_config(dir.string());
  const core::ParamTable t = core::make_param_table(m);
  ASSERT_GE(t.find("model.layers.0.mlp.gate_proj.weight"), 0);
  ASSERT_GE(t.find("model.layers.1.mlp.shared_expert_gate.weight"), 0);
  ASSERT_GE(t.find("model.layers.2.self_attn.q_proj.bias"), 0);
  std::vector<float> expected = random_params(t, 12);
  std::vector<std::string> all = names_of(t);
  std::vector<std::string> first(all.begin(), all.begin() + static_cast<long>(all.size() / 2));
  std::vector<std::string> second(all.begin() + static_cast<long>(all.size() / 2), all.end());
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  json wm = json::object();
  for (auto& n : first) wm[n] = s1;
  for (auto& n : second) wm[n] = s2;
  write_json(dir / "model.safetensors.index.json", {{"metadata", {{"total_size", 0}}}, {"weight_map", wm}});
  write_shard(dir / s1, t, first, expected);
  write_shard(dir / s2, t, second, expected);
  std::vector<float> got(static_cast<size_t>(t.total()), -1.0f);
  core::formats::load_hf_weights(dir.string(), t, got.data());
  EXPECT_EQ(got, expected);

  auto load = [&] { core::formats::load_hf_weights(dir.string(), t, got.data()); };

  // a missing tensor (dropped from the shard and the index)
  {
    std::vector<std::string> fewer(second.begin() + 1, second.end());
    json wm2 = wm;
    wm2.erase(second[0]);
    write_json(dir / "model.safetensors.index.json", {{"weight_map", wm2}});
    write_shard(dir / s2, t, fewer, expected);
    const std::string msg = usage_error(load);
    EXPECT_HAS(msg, "missing tensor '" + second[0] + "' " + core::formats::shape_str(t.at(second[0]).shape));
    EXPECT_HAS(msg, (dir / "model.safetensors.index.json").string());
    // the index naming a tensor the shard does not hold
    write_json(dir / "model.safetensors.index.json", {{"weight_map", wm}});
    EXPECT_HAS(usage_error(load), "the index maps tensor '" + second[0] + "' to " + (dir / s2).string() +
                                      ", which does not contain it");
  }
  // a tensor with the wrong shape
  {
    const std::string name = "model.layers.2.mlp.experts.1.down_proj.weight";
    ASSERT_TRUE(std::find(second.begin(), second.end(), name) != second.end());
    std::vector<float> wrong(16 * 7);
    std::vector<core::formats::TensorWrite> w;
    for (auto& n : second) {
      const auto& s = t.at(n);
      if (n == name) w.push_back({n, "F32", {16, 7}, wrong.data()});
      else w.push_back({n, "F32", s.shape, expected.data() + s.offset});
    }
    core::formats::write_safetensors((dir / s2).string(), w);
    EXPECT_HAS(usage_error(load), (dir / s2).string() + ": tensor '" + name +
                                      "' has shape [16, 7], expected [16, 8]");
  }
  // an extra tensor the model does not know (zero-sized and rotary ones are ignored)
  {
    std::vector<float> junk(16), inv(2);
    write_shard(dir / s2, t, second, expected,
                {{"model.layers.9.mlp.gate.weight", "F32", {16}, junk.data()},
                 {"model.layers.1.self_attn.rotary_emb.inv_freq", "F32", {2}, inv.data()},
                 {"model.layers.1.mlp.zero", "F32", {0, 16}, nullptr}});
    json wm2 = wm;
    wm2["model.layers.9.mlp.gate.weight"] = s2;
    write_json(dir / "model.safetensors.index.json", {{"weight_map", wm2}});
    const std::string msg = usage_error(load);
    EXPECT_HAS(msg, "1 tensor of the checkpoint is not part of the model described by the config: "
                    "'model.layers.9.mlp.gate.weight' (in " + (dir / s2).string() + ")");
  }
  // an index naming a shard that does not exist
  {
    json wm2 = wm;
    wm2[second[0]] = "model-00003-of-00002.safetensors";
    write_json(dir / "model.safetensors.index.json", {{"weight_map", wm2}});
    EXPECT_HAS(usage_error(load), (dir / "model-00003-of-00002.safetensors").string() + ": cannot open");
    wm2[second[0]] = "../escape.safetensors";
    write_json(dir / "model.safetensors.index.json", {{"weight_map", wm2}});
    EXPECT_HAS(usage_error(load), "expected a file name inside");
  }
}

TEST(HfWeights, NoCheckpointAndTiedAndZeroSharedExpert) {
  auto dir = test::temp_dir("HfWeights_Misc");
  json j = qwen_json();
  j["shared_expert_intermediate_size"] = 0;
  j["tie_word_embeddings"] = true;
  write_json(dir / "config.json", j);
  const core::ModelConfig m = core::formats::read_hf_config(dir.string());
  const core::ParamTable t = core::make_param_table(m);
  ASSERT_LT(t.find("lm_head.weight"), 0);
  std::vector<float> got(static_cast<size_t>(t.total()));
  EXPECT_HAS(usage_error([&] { core::formats::load_hf_weights(dir.string(), t, got.data()); }),
             dir.string() + ": neither model.safetensors nor model.safetensors.index.json");

  // transformers writes a zero-sized shared expert (and its gate) and may write a tied lm_head.
  std::vector<float> expected = random_params(t, 13);
  std::vector<float> gate(16), head(32 * 16);
  write_shard(dir / "model.safetensors", t, names_of(t), expected,
              {{"model.layers.1.mlp.shared_expert.gate_proj.weight", "F32", {0, 16}, nullptr},
               {"model.layers.1.mlp.shared_expert.up_proj.weight", "F32", {0, 16}, nullptr},
               {"model.layers.1.mlp.shared_expert.down_proj.weight", "F32", {16, 0}, nullptr},
               {"model.layers.1.mlp.shared_expert_gate.weight", "F32", {1, 16}, gate.data()},
               {"lm_head.weight", "F32", {32, 16}, head.data()}});
  core::formats::load_hf_weights(dir.string(), t, got.data());
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace switchyard
