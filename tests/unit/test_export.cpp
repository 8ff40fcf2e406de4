// tests/unit/test_export.cpp: --max-shard-size parsing of `switchyard export`, the int8 quantizer
// and the loader's int8 checks. The export itself (HF layout, shards, tokenizer, round trip,
// reference logits, int8, GGUF) runs end to end in tests/scripts/export_{roundtrip,int8,gguf}.sh.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"
#include "launch/export.h"
#include "launch/export_int8.h"
#include "launch/model_io.h"
#include "testing.h"

namespace switchyard {
namespace {

using launch::parse_byte_size;


using test::usage_error;

TEST(ExportRouting, TopPIsNotExpressibleInTheHfLayouts) {
  core::ModelConfig c = test::small_moe_model(1);
  EXPECT_EQ(core::formats::hf_routing_unsupported(c), "");
  c.moe.router.top_p = 0.5;
  c.moe.router.k_max = 2;
  EXPECT_NE(core::formats::hf_routing_unsupported(c).find("top-p routing (model.moe.router.top_p"),
            std::string::npos);
}

TEST(ExportShardSize, Units) {
  EXPECT_EQ(parse_byte_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_byte_size("500MB"), 500000000ull);
  EXPECT_EQ(parse_byte_size("2000KB"), 2000000ull);
  EXPECT_EQ(parse_byte_size("2000kb"), 2000000ull);
  EXPECT_EQ(parse_byte_size("123"), 123ull);
  EXPECT_EQ(parse_byte_size("123B"), 123ull);
  EXPECT_EQ(parse_byte_size("1GiB"), 1ull << 30);
  EXPECT_EQ(parse_byte_size("3MiB"), 3ull << 20);
}

TEST(ExportShardSize, RejectsBadSizes) {
  for (const char* bad : {"", "GB", "5XB", "5 GB", "-5GB", "0", "1.5GB", "99999999999999999GB", "999999999999999TB"}) {
    try {
      parse_byte_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--max-shard-size"), std::string::npos) << e.what();
    }
  }
}

TEST(ExportInt8, QuantizesPerRow) {
  const std::vector<float> w = {0.5f, -1.0f, 0.25f, 0.0f, 0.0f, 0.0f, 127.0f, -63.5f, 1.0f};
  const launch::Int8Tensor t = launch::quantize_int8(w.data(), 3, 3);
  EXPECT_EQ(t.scale, (std::vector<float>{1.0f / 127.0f, 0.0f, 1.0f}));
  EXPECT_EQ(t.q, (std::vector<int8_t>{64, -127, 32, 0, 0, 0, 127, -64, 1}));  // 63.5 rounds to even
}

TEST(ExportInt8, WhichTensors) {
  using launch::int8_quantized_tensor;
  for (const char* yes : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                          "model.layers.1.block_sparse_moe.experts.3.w2.weight", "lm_head.weight",
                          "model.layers.0.mlp.shared_expert.up_proj.weight", "model.layers.0.mlp.down_proj.weight"})
    EXPECT_TRUE(int8_quantized_tensor(yes, {4, 4})) << yes;
  for (const char* no : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
                         "model.layers.0.block_sparse_moe.gate.weight", "model.layers.0.mlp.shared_expert_gate.weight"})
    EXPECT_FALSE(int8_quantized_tensor(no, {4, 4})) << no;
  EXPECT_FALSE(int8_quantized_tensor("model.layers.0.self_attn.q_proj.bias", {4}));
}

// The loader dequantizes I8 + _scale and names the file when the scales are missing or wrong.
TEST(ExportInt8, LoaderDequantizesAndChecksScales) {
  core::ModelConfig m;
  m.d_model = 16; m.n_layers = 1; m.n_heads = 2; m.n_kv_heads = 1; m.vocab_size = 32;
  m.moe.n_experts = 2; m.moe.top_k = 1; m.moe.expert_size = 8;
  const core::ParamTable table = core::make_param_table(m);
  std::vector<float> params(static_cast<size_t>(table.total()), 0.25f);
  const auto dir = test::temp_dir("ExportInt8_Loader");
  launch::save_hf_model(dir.string(), m, table, params.data());
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const auto& spec = table.at(q);
  std::vector<int8_t> qdata(static_cast<size_t>(spec.shape[0] * spec.shape[1]), -3);
  std::vector<float> scale(static_cast<size_t>(spec.shape[0]), 0.5f);
  auto write = [&](bool with_scale, std::vector<int64_t> scale_shape) {
    std::vector<core::formats::TensorWrite> w;
    for (const auto& s : table.specs())
      if (s.name == q) w.push_back({q, "I8", s.shape, qdata.data()});
      else w.push_back({s.name, "F32", s.shape, params.data() + s.offset});
    if (with_scale) w.push_back({q + "_scale", "F32", scale_shape, scale.data()});
    core::formats::write_safetensors((dir / "model.safetensors").string(), w, {});
  };
  write(true, {spec.shape[0]});
  std::vector<float> got(params.size());
  core::formats::load_hf_weights(dir.string(), table, got.data());
  for (int64_t i = 0; i < table.total(); ++i)
    EXPECT_EQ(got[static_cast<size_t>(i)],
              i >= spec.offset && i < spec.offset + spec.shape[0] * spec.shape[1] ? -1.5f : 0.25f);
  const std::string file = (dir / "model.safetensors").string();
  write(false, {});
  EXPECT_HAS(usage_error([&] { core::formats::load_hf_weights(dir.string(), table, got.data()); }),
             file + ": tensor '" + q + "' is I8 but there is no '" + q + "_scale'");
  write(true, {spec.shape[0] / 2, 2});
  EXPECT_HAS(usage_error([&] { core::formats::load_hf_weights(dir.string(), table, got.data()); }),
             file + ": tensor '" + q + "_scale' must be F32 of shape [");
}

}  // namespace
}  // namespace switchyard
