// tests/unit/test_data_layer.cpp: samples (documents and chunks), draws (epoch permutation,
// weighted, disjoint over ranks), rows with and without packing, the per-sample statistics and
// their scores, and the prefetch thread's invariance (data/samples.h, batcher.h, sample_stats.h,
// train_data.h). Token files: the in-memory source below, and a Megatron dataset written by prepare.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "core/config.h"
#include "data/batcher.h"
#include "data/prepare.h"
#include "data/sample_stats.h"
#include "data/samples.h"
#include "data/train_data.h"
#include "testing.h"

namespace sy = switchyard;
using sy::data::SampleIndex;

namespace {

// Documents of the given lengths; token at stream position p = 1 + p % 200 (end of document 0).
class MemorySource final : public sy::data::TokenSource {
 public:
  explicit MemorySource(const std::vector<int64_t>& lengths, bool with_docs = true) : with_docs_(with_docs) {
    off_.push_back(0);
    for (int64_t n : lengths) off_.push_back(off_.back() + n);
    for (int64_t d = 0; d + 1 < static_cast<int64_t>(off_.size()); ++d)
      for (int64_t p = off_[static_cast<size_t>(d)]; p < off_[static_cast<size_t>(d + 1)]; ++p)
        tokens_.push_back(p + 1 == off_[static_cast<size_t>(d + 1)] ? 0 : static_cast<int32_t>(1 + p % 200));
  }
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  void read(int64_t begin, int64_t count, int32_t* out) const override {
    std::copy(tokens_.begin() + begin, tokens_.begin() + begin + count, out);
  }
  std::string describe() const override { return "memory.tokens"; }
  int64_t vocab_hint() const override { return 256; }
  const std::string& path() const override { return path_; }
  std::vector<int64_t> doc_offsets() const override { return with_docs_ ? off_ : std::vector<int64_t>{}; }
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  bool with_docs_;
  std::vector<int64_t> off_;
  std::vector<int32_t> tokens_;
  std::string path_ = "memory.tokens";
};

}  // namespace

// Chunks of seq_len + 1 tokens sharing one token: every target of a document in exactly one
// sample; documents of one token are no sample.
TEST(Samples, ChunksCoverEveryTargetOnce) {
  const MemorySource src({5, 1, 9, 2, 20});
  const SampleIndex idx({&src}, 4);  // samples of at most 5 tokens
  std::vector<int> covered(static_cast<size_t>(src.size()), 0);
  for (int64_t s = 0; s < idx.size(); ++s) {
    const auto sp = idx.span(s);
    EXPECT_GE(sp.length, 2);
    EXPECT_LE(sp.length, 5);
    for (int64_t p = sp.begin + 1; p < sp.begin + sp.length; ++p) ++covered[static_cast<size_t>(p)];
  }
  const auto off = src.doc_offsets();
  for (size_t d = 0; d + 1 < off.size(); ++d)
    for (int64_t p = off[d]; p < off[d + 1]; ++p)
      EXPECT_EQ(covered[static_cast<size_t>(p)], p == off[d] ? 0 : 1) << "position " << p;
  // 5 -> 1 sample, 1 -> none, 9 -> [0,5) [4,9), 2 -> 1, 20 -> [0,5) [4,9) [8,13) [12,17) [16,20)
  EXPECT_EQ(idx.size(), 1 + 2 + 1 + 5);
  EXPECT_EQ(idx.document(0), 0);
  EXPECT_EQ(idx.document(1), 2);  // document 1 (one token) has no sample
  EXPECT_EQ(idx.document(3), 3);
  EXPECT_EQ(idx.document(8), 4);
}

TEST(Samples, SourceWithoutDocumentsIsAUsageError) {
  const MemorySource src({5, 6}, false);
  const std::string m = sy::test::usage_error([&] { SampleIndex({&src}, 4); });
  EXPECT_NE(m.find("memory.tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("data.sample: window"), std::string::npos) << m;
  const MemorySource empty({1, 1});
  EXPECT_NE(sy::test::usage_error([&] { SampleIndex({&empty}, 4); }).find("no document of 2 tokens"),
            std::string::npos);
}

TEST(Draws, PermutationIsABijection) {
  for (int64_t n : {1, 2, 3, 7, 64, 100, 1000, 4097}) {
    std::vector<int> seen(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < n; ++i) ++seen[static_cast<size_t>(sy::data::permute_index(i, n, 12345))];
    EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; })) << n;
  }
  // another key, another order
  int same = 0;
  for (int64_t i = 0; i < 1000; ++i) same += sy::data::permute_index(i, 1000, 1) == sy::data::permute_index(i, 1000, 2);
  EXPECT_LT(same, 20);
}

// Uniform draws: in each epoch every sample once, the ranks' draws disjoint.
TEST(Draws, UniformEpochsAreDisjointOverRanks) {
  const MemorySource src(std::vector<int64_t>(37, 4));
  const SampleIndex idx({&src}, 8);
  ASSERT_EQ(idx.size(), 37);
  for (int world : {1, 2, 3}) {
    std::vector<std::unique_ptr<sy::data::DocumentBatcher>> b;
    for (int r = 0; r < world; ++r)
      b.push_back(std::make_unique<sy::data::DocumentBatcher>(idx, std::vector<const sy::data::TokenSource*>{&src},
                                                               256, 7, r, world, false));
    std::map<int64_t, int> count;
    for (int64_t g = 0; g < 2 * 37; ++g) ++count[b[static_cast<size_t>(g % world)]->sample_of_draw(g, nullptr)];
    ASSERT_EQ(count.size(), 37u) << world;
    for (const auto& [s, c] : count) EXPECT_EQ(c, 2) << "sample " << s << " world " << world;
  }
}

// Weighted draws follow the weights, and per round of S draws each sample comes floor or ceil of
// S * its probability times (systematic sampling); equal weights give the permutation.
TEST(Draws, WeightedDrawsFollowTheWeights) {
  const MemorySource src(std::vector<int64_t>(4, 4));
  const SampleIndex idx({&src}, 8);
  sy::data::DrawWeights w;
  w.cumulative = {1, 1.5, 4.5, 5};  // weights 1, 0.5, 3, 0.5
  sy::data::DocumentBatcher b(idx, {&src}, 256, 3, 0, 1, false);
  std::vector<double> freq(4, 0);
  const int n = 40000;
  for (int g = 0; g < n; ++g) freq[static_cast<size_t>(b.sample_of_draw(g, &w))] += 1.0 / n;
  const std::vector<double> want = {0.2, 0.1, 0.6, 0.1};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(freq[i], want[i], 0.01) << i;
  // 40 samples with weights 1..40: every round gives each floor/ceil of 40 * w / 820 draws
  const MemorySource many(std::vector<int64_t>(40, 4));
  const SampleIndex big({&many}, 8);
  sy::data::DrawWeights w40, equal;
  double sum = 0;
  for (int s = 0; s < 40; ++s) w40.cumulative.push_back(sum += s + 1), equal.cumulative.push_back(s + 1.0);
  sy::data::DocumentBatcher bb(big, {&many}, 256, 9, 0, 1, false);
  for (int64_t round = 0; round < 50; ++round) {
    std::vector<int> count(40, 0);
    for (int64_t j = 0; j < 40; ++j) ++count[static_cast<size_t>(bb.sample_of_draw(round * 40 + j, &w40))];
    for (int s = 0; s < 40; ++s) {
      const double expect = 40.0 * (s + 1) / 820.0;
      EXPECT_GE(count[static_cast<size_t>(s)], std::floor(expect)) << "round " << round << " sample " << s;
      EXPECT_LE(count[static_cast<size_t>(s)], std::ceil(expect)) << "round " << round << " sample " << s;
    }
    for (int64_t j = 0; j < 40; ++j)
      EXPECT_EQ(bb.sample_of_draw(round * 40 + j, &equal), bb.sample_of_draw(round * 40 + j, nullptr));
  }
}

// Without packing: each row is one sample (inputs, shifted targets, the rest padding).
TEST(Rows, OneSamplePerRowMatchesTheSource) {
  const MemorySource src({3, 9, 6, 2, 7});
  const SampleIndex idx({&src}, 6);
  sy::data::DocumentBatcher b(idx, {&src}, 256, 11, 0, 1, false);
  const auto mb = b.next(4, nullptr);
  ASSERT_EQ(mb.samples.size(), 4u);
  EXPECT_TRUE(mb.doc_start.empty());
  for (const auto& p : mb.samples) {
    const auto sp = idx.span(p.sample);
    EXPECT_EQ(p.offset, 0);
    EXPECT_EQ(p.positions, sp.length - 1);
    for (int64_t t = 0; t < 6; ++t) {
      const size_t at = static_cast<size_t>(p.row * 6 + t);
      if (t < p.positions) {
        EXPECT_EQ(mb.tokens[at], src.tokens()[static_cast<size_t>(sp.begin + t)]);
        EXPECT_EQ(mb.targets[at], src.tokens()[static_cast<size_t>(sp.begin + t + 1)]);
        EXPECT_EQ(mb.weights[at], 1.f);
      } else {
        EXPECT_EQ(mb.targets[at], -1);
      }
    }
  }
  EXPECT_EQ(b.state().drawn, 4);
}

// Packing: samples back to back in rows, doc_start marking each, nothing lost: every draw is placed
// once, in this micro-batch or a later one (the pool carries the rest).
TEST(Rows, PackingPlacesEveryDrawOnce) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 60; ++i) lengths.push_back(2 + (i * 7) % 15);
  const MemorySource src(lengths);
  const SampleIndex idx({&src}, 16);
  sy::data::DocumentBatcher b(idx, {&src}, 256, 5, 0, 1, true);
  std::multiset<int64_t> placed;
  int64_t pad = 0, positions = 0;
  for (int m = 0; m < 6; ++m) {
    const auto mb = b.next(3, nullptr);
    ASSERT_EQ(mb.doc_start.size(), 48u);
    std::vector<int> used(48, 0);
    for (const auto& p : mb.samples) {
      placed.insert(p.sample);
      const auto sp = idx.span(p.sample);
      for (int32_t t = 0; t < p.positions; ++t) {
        const size_t at = static_cast<size_t>(p.row * 16 + p.offset + t);
        ++used[at];
        EXPECT_EQ(mb.doc_start[at], p.offset);
        EXPECT_EQ(mb.tokens[at], src.tokens()[static_cast<size_t>(sp.begin + t)]);
        EXPECT_EQ(mb.targets[at], src.tokens()[static_cast<size_t>(sp.begin + t + 1)]);
      }
    }
    for (size_t i = 0; i < 48; ++i) {
      EXPECT_LE(used[i], 1);
      if (!used[i]) {
        EXPECT_EQ(mb.targets[i], -1);
        EXPECT_EQ(mb.doc_start[i], static_cast<int32_t>(i % 16));
        ++pad;
      }
    }
    positions += 48;
  }
  // what was drawn = what was placed + what waits in the pool
  std::multiset<int64_t> drawn;
  for (int64_t g = 0; g < b.state().drawn; ++g) drawn.insert(b.sample_of_draw(g, nullptr));
  std::multiset<int64_t> both = placed;
  both.insert(b.state().pool.begin(), b.state().pool.end());
  EXPECT_EQ(both, drawn);
  EXPECT_LT(static_cast<double>(pad) / static_cast<double>(positions), 0.1);  // best fit leaves little
}

// EMA, excess and slope by hand; flags and weights; the table's round trip.
TEST(SampleStats, UpdatesScoresAndTable) {
  sy::core::DataConfig cfg;
  cfg.sample = sy::core::SampleUnit::document;
  cfg.stats_ema = 0.5;
  cfg.noise = {true, 0, 2, 1.0, 0.05, 0.05, 0.1};
  cfg.mining = {true, 0, 2, 0.2, 2.0, 4.0};
  sy::data::SampleStats st(4, cfg);
  // step medians: losses {4, 2, 2, 2} -> median 2
  EXPECT_DOUBLE_EQ(st.update({{0, 4.f}, {1, 2.f}, {2, 2.f}, {3, 2.f}}), 2.0);
  EXPECT_FALSE(st.score(0, 1).noisy);  // one visit: not scored yet
  // second visit: sample 0 stays 2 above (noisy), sample 3 falls from 0 to... set 3 high then falling
  st.update({{0, 4.f}, {1, 2.f}, {2, 2.f}, {3, 3.f}, {1, 2.f}});  // median 2: excess 0 -> 2, 3 -> 1
  const auto s0 = st.score(0, 2);
  EXPECT_EQ(s0.visits, 2);
  EXPECT_FLOAT_EQ(s0.first, 4.f);
  EXPECT_FLOAT_EQ(s0.ema, 4.f);
  EXPECT_FLOAT_EQ(s0.excess, 2.f);
  EXPECT_FLOAT_EQ(s0.slope, 0.f);
  EXPECT_TRUE(s0.noisy);
  EXPECT_FLOAT_EQ(s0.draw_weight, 0.05f);
  EXPECT_FLOAT_EQ(s0.loss_weight, 0.1f);
  const auto s3 = st.score(3, 2);  // excess 0 then 1: ema 0.5, slope +1 -> rising: neither
  EXPECT_FLOAT_EQ(s3.excess, 0.5f);
  EXPECT_FLOAT_EQ(s3.slope, 1.f);
  EXPECT_FALSE(s3.noisy);
  EXPECT_FALSE(s3.hard);
  st.update({{3, 2.5f}, {1, 2.f}, {2, 2.f}});  // median 2: excess 0.5, change 0.5 - 0.5 = 0 -> slope 0.5
  st.update({{3, 2.0f}, {1, 2.f}, {2, 2.f}});  // excess 0: change -0.5, slope 0.5*0.5 - 0.25 = 0
  const auto s3b = st.score(3, 4);
  EXPECT_FLOAT_EQ(s3b.excess, 0.25f);
  EXPECT_FLOAT_EQ(s3b.slope, 0.f);
  EXPECT_TRUE(s3b.hard);  // above 0.2 and no longer rising
  EXPECT_FLOAT_EQ(s3b.draw_weight, 1.5f);
  // the table round-trips, and a table of another size is refused
  sy::data::SampleStats back(4, cfg);
  back.from_table(st.to_table(), "t");
  EXPECT_EQ(back.to_table(), st.to_table());
  sy::data::SampleStats other(5, cfg);
  EXPECT_NE(sy::test::usage_error([&] { other.from_table(st.to_table(), "ck/data.h5"); }).find("ck/data.h5"),
            std::string::npos);
  // draw weights: noisy sample 0 at 0.05, the others 1
  const auto w = st.draw_weights(4, {});
  ASSERT_TRUE(w);
  EXPECT_EQ(w->noisy_count, 1);
  EXPECT_FLOAT_EQ(w->min_weight, 0.05f);
  EXPECT_NEAR(w->cumulative.back(), 0.05 + 1 + 1 + 1.5, 1e-6);
  EXPECT_EQ(w->hard_count, 1);
  // before the warmups nothing is flagged
  cfg.noise.warmup_steps = cfg.mining.warmup_steps = 100;
  sy::data::SampleStats cold(4, cfg);
  cold.from_table(st.to_table(), "t");
  EXPECT_FALSE(cold.score(0, 4).noisy);
  EXPECT_EQ(cold.draw_weights(4, {}), nullptr);
}

namespace {

sy::core::ExperimentConfig data_config(const std::string& prefix, bool packing, bool prefetch) {
  sy::core::ExperimentConfig cfg;
  cfg.model.vocab_size = 256;
  cfg.train.seq_len = 32;
  cfg.train.grad_accum = 2;
  cfg.train.steps = 8;
  cfg.train.seed = 3;
  cfg.data.train = prefix;
  cfg.data.sample = sy::core::SampleUnit::document;
  cfg.data.packing = packing;
  cfg.data.prefetch = prefetch;
  cfg.data.noise = {true, 2, 1, 0.3, 0.05, 0.05, 0.1};
  cfg.data.mining = {true, 2, 1, 0.1, 2.0, 4.0};
  return cfg;
}

std::string write_corpus(const std::string& name) {
  const auto dir = sy::test::temp_dir(name);
  const auto docs = dir / "docs";
  std::filesystem::create_directories(docs);
  for (int i = 0; i < 40; ++i) {
    std::ofstream f(docs / fmt::format("d{:02d}.txt", i));
    for (int k = 0; k < 1 + (i * 5) % 13; ++k) f << "line " << i << " of words " << k * i << "\n";
  }
  sy::data::PrepareOptions o;
  o.format = sy::data::PrepareFormat::megatron;
  sy::data::prepare_corpus({docs.string()}, (dir / "ds").string(), 0.0, o);
  return (dir / "ds").string();
}

}  // namespace

// The prefetch thread changes nothing: the same batches, step by step, with statistics recorded
// in between (the weights' fixed lag), with and without it, packed or not.
TEST(TrainData, PrefetchChangesNothing) {
  const std::string prefix = write_corpus("prefetch_invariance");
  for (bool packing : {false, true}) {
    std::vector<std::vector<int32_t>> seen[2];
    for (int pf = 0; pf < 2; ++pf) {
      sy::data::TrainData d(data_config(prefix, packing, pf == 1), 0, 1, 3);
      for (int64_t step = 0; step < 8; ++step) {
        const auto sb = d.take(step);
        std::vector<sy::data::SampleLoss> visits;
        for (const auto& mb : sb.micro) {
          seen[pf].push_back(mb.tokens);
          seen[pf].push_back(mb.targets);
          for (const auto& p : mb.samples)  // a loss that singles out some samples as noisy
            visits.push_back({p.sample, p.sample % 7 == 0 ? 6.f : 2.f + 0.01f * static_cast<float>(p.sample), p.loss_weight});
        }
        d.record(visits, step);
      }
    }
    EXPECT_EQ(seen[0], seen[1]) << "packing " << packing;
  }
}
