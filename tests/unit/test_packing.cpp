// tests/unit/test_packing.cpp: packed rows in the whole model (moe::Batch::doc_start), on the CPU.
//  - invariance: rows packed with documents A|B|C give the same per-position losses and parameter
//    gradients (1e-5 relative) as each document alone in a row of its own, padded with ignored
//    targets, for a dense and an MoE model (routing without capacity is per token; the balancing
//    losses, which average over all tokens of a micro-batch padding included, are off). RoPE
//    scores depend on relative positions only, so this checks the attention mask; the restarted
//    positions themselves show kernel by kernel (test_packed_conformance.cpp);
//  - activation checkpointing recomputes packed blocks bit-identically (full, selective);
//  - an all-zero doc_start (one document per row) is bitwise the unpacked forward and backward;
//  - a malformed doc_start is an internal error naming the position.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "moe/model.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::Recompute;

constexpr int64_t kT = 16;  // small_moe_model's max_seq_len
// The packed batch: per row, its documents' lengths (each row sums to kT).
const std::vector<std::vector<int64_t>> kRows = {{5, 7, 4}, {9, 1, 6}};

core::ModelConfig moe_model() {
  core::ModelConfig m = test::small_moe_model(2);
  m.moe.aux_loss_coef = 0;
  m.moe.z_loss_coef = 0;
  m.init_std = 0.3;  // decisive routing: no near-ties that rounding could flip between layouts
  return m;
}

core::ModelConfig dense_model() {
  core::ModelConfig m = moe_model();
  m.first_dense_layers = m.n_layers;
  m.dense_ffn_size = 40;
  return m;
}

// A batch's host arrays.
struct Rows {
  int64_t B = 0;
  std::vector<int32_t> tokens, targets, doc_start;
  moe::Batch batch(bool packed) const {
    return moe::Batch{tokens.data(), targets.data(), nullptr, packed ? doc_start.data() : nullptr, 0, B, kT};
  }
};

// Token and target of position t of document d: a fixed stream; the last position of each
// document has no target (its next token belongs to another document).
int32_t token_of(int64_t d, int64_t t, int64_t V) { return static_cast<int32_t>((d * 131 + t * 17 + 3) % V); }
int32_t target_of(int64_t d, int64_t t, int64_t len, int64_t V) {
  return t + 1 == len ? -1 : static_cast<int32_t>((d * 59 + t * 23 + 11) % V);
}

// kRows packed, and every document alone in a row of its own (kT positions, padding token 0
// with target -1). where[d]: the packed position (b*kT + t0) of document d.
struct Layouts {
  Rows packed, alone;
  std::vector<int64_t> where, length;
};

Layouts layouts(int64_t V) {
  Layouts l;
  l.packed.B = static_cast<int64_t>(kRows.size());
  int64_t d = 0;
  for (size_t b = 0; b < kRows.size(); ++b) {
    int64_t t0 = 0;
    for (const int64_t len : kRows[b]) {
      l.where.push_back(static_cast<int64_t>(b) * kT + t0);
      l.length.push_back(len);
      for (int64_t t = 0; t < kT; ++t) {
        if (t < len) {
          l.packed.tokens.push_back(token_of(d, t, V));
          l.packed.targets.push_back(target_of(d, t, len, V));
          l.packed.doc_start.push_back(static_cast<int32_t>(t0));
        }
        l.alone.tokens.push_back(t < len ? token_of(d, t, V) : 0);
        l.alone.targets.push_back(t < len ? target_of(d, t, len, V) : -1);
      }
      t0 += len;
      ++d;
    }
  }
  l.alone.B = d;
  return l;
}

struct Result {
  std::vector<float> losses, grads;
  double loss = 0;
};

Result run(const core::ModelConfig& cfg, const Rows& rows, bool packed, Recompute r = Recompute::none) {
  auto be = test::test_backend();
  moe::ModelOptions opts;
  opts.recompute = r;
  moe::Model model(*be, cfg, rows.B, kT, {}, opts);
  model.init_random(11);
  model.zero_grads();
  Result out;
  out.loss = model.forward(rows.batch(packed)).loss;
  out.losses = model.token_losses();
  model.backward();
  out.grads = test::to_host(*be, model.grads(), model.num_params());
  return out;
}

double rel_l2(const float* got, const float* want, int64_t n) {
  double d = 0, w = 0;
  for (int64_t i = 0; i < n; ++i) {
    d += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    w += static_cast<double>(want[i]) * want[i];
  }
  return w > 0 ? std::sqrt(d / w) : std::sqrt(d);
}

void expect_packing_invariant(const core::ModelConfig& cfg) {
  const Layouts l = layouts(cfg.vocab_size);
  const Result packed = run(cfg, l.packed, true), alone = run(cfg, l.alone, false);
  EXPECT_NEAR(packed.loss, alone.loss, 1e-5 * std::abs(alone.loss));
  for (size_t d = 0; d < l.where.size(); ++d)
    for (int64_t t = 0; t < l.length[d]; ++t) {
      const float got = packed.losses[static_cast<size_t>(l.where[d] + t)];
      const float want = alone.losses[static_cast<size_t>(static_cast<int64_t>(d) * kT + t)];
      EXPECT_NEAR(got, want, 1e-5 * std::abs(want) + 1e-6) << "document " << d << " position " << t;
    }
  const core::ParamTable table = core::make_param_table(cfg);
  for (const auto& p : table.specs()) {
    const double e = rel_l2(packed.grads.data() + p.offset, alone.grads.data() + p.offset, p.numel);
    EXPECT_LE(e, 1e-5) << p.name << ": gradient relative L2 error " << e;
  }
  // without doc_start the packed rows' documents see each other: the check above can fail
  const Result unpacked = run(cfg, l.packed, false);
  EXPECT_GT(rel_l2(unpacked.losses.data(), packed.losses.data(), kT * l.packed.B), 1e-3);
}

TEST(Packing, DenseModelPackedRowsEqualDocumentsAlone) { expect_packing_invariant(dense_model()); }

TEST(Packing, MoeModelPackedRowsEqualDocumentsAlone) { expect_packing_invariant(moe_model()); }

TEST(Packing, CheckpointingRecomputesPackedBlocksBitIdentically) {
  core::ModelConfig cfg = moe_model();
  cfg.first_dense_layers = 1;
  cfg.dense_ffn_size = 40;
  const Layouts l = layouts(cfg.vocab_size);
  const Result none = run(cfg, l.packed, true);
  for (Recompute r : {Recompute::full, Recompute::selective}) {
    SCOPED_TRACE(core::name_of(r));
    const Result got = run(cfg, l.packed, true, r);
    EXPECT_EQ(0, std::memcmp(got.grads.data(), none.grads.data(), got.grads.size() * sizeof(float)));
    EXPECT_EQ(got.losses, none.losses);
  }
}

TEST(Packing, AllZeroDocStartIsBitwiseUnpacked) {
  const core::ModelConfig cfg = moe_model();
  Rows rows = layouts(cfg.vocab_size).packed;
  rows.doc_start.assign(rows.doc_start.size(), 0);
  const Result packed = run(cfg, rows, true), plain = run(cfg, rows, false);
  EXPECT_EQ(0, std::memcmp(packed.grads.data(), plain.grads.data(), packed.grads.size() * sizeof(float)));
  EXPECT_EQ(packed.losses, plain.losses);
}

TEST(Packing, MalformedDocStartIsAnInternalError) {
  const core::ModelConfig cfg = moe_model();
  auto be = test::test_backend();
  moe::Model model(*be, cfg, 1, kT, {});
  model.init_random(11);
  Rows rows = layouts(cfg.vocab_size).packed;
  rows.B = 1;
  struct Bad {
    int64_t t;
    int32_t value;
  };
  // past its position; before the previous position's document; a restart inside a document
  for (const Bad bad : {Bad{0, 1}, Bad{6, 0}, Bad{9, 6}}) {
    Rows r = rows;
    r.doc_start[static_cast<size_t>(bad.t)] = bad.value;
    const std::string msg = test::internal_error([&] { model.forward(r.batch(true)); });
    EXPECT_HAS(msg, fmt::format("doc_start {} at row 0 position {}", bad.value, bad.t));
  }
  model.forward(rows.batch(true));  // the well-formed one runs
}

}  // namespace
}  // namespace switchyard
