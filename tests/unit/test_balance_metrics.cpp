// Balance measures of MoE layers from expert counts (launch/balance_metrics.h), against values
// computed by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "launch/balance_metrics.h"

namespace switchyard::launch {
namespace {

void expect_balance(const LayerBalance& b, double busiest30, double max_over_mean, double load_cv) {
  EXPECT_DOUBLE_EQ(b.busiest30_share, busiest30);
  EXPECT_DOUBLE_EQ(b.max_over_mean, max_over_mean);
  EXPECT_DOUBLE_EQ(b.load_cv, load_cv);
}

TEST(BalanceMetrics, BusiestCountRoundsUp) {
  // ceil(3E/10), at least one expert
  const std::vector<std::pair<int64_t, int64_t>> cases = {{1, 1},  {2, 1},  {3, 1},  {4, 2},   {8, 3},  {10, 3},
                                                          {11, 4}, {16, 5}, {20, 6}, {64, 20}, {128, 39}};
  for (const auto& [E, k] : cases) EXPECT_EQ(busiest_count(E), k) << "E = " << E;
}

TEST(BalanceMetrics, PerfectlyBalanced) {
  const LayerBalance b = layer_balance(std::vector<int64_t>(10, 7));
  EXPECT_EQ(b.tokens, 70);
  EXPECT_EQ(b.share, std::vector<double>(10, 0.1));
  expect_balance(b, 0.3, 1.0, 0.0);
  // E not a multiple of 10: the perfect value is busiest_count(E) / E
  EXPECT_DOUBLE_EQ(layer_balance(std::vector<int64_t>(16, 3)).busiest30_share, 5.0 / 16.0);
}

TEST(BalanceMetrics, AllTokensOnOneExpert) {
  std::vector<int64_t> counts(10, 0);
  counts[2] = 50;
  const LayerBalance b = layer_balance(counts);
  // max/mean E; CV sqrt(E - 1): std sqrt((45^2 + 9 * 5^2) / 10) = 15 over mean 5
  expect_balance(b, 1.0, 10.0, 3.0);
  EXPECT_DOUBLE_EQ(b.share[2], 1.0);
}

TEST(BalanceMetrics, EightExpertsUnsorted) {
  // E = 8: the 3 busiest (ceil 2.4) are 8 + 7 + 6 = 21 of 36; mean 4.5; squared deviations sum 42
  const LayerBalance b = layer_balance(std::vector<int64_t>{3, 8, 1, 6, 4, 7, 2, 5});
  expect_balance(b, 21.0 / 36.0, 8.0 / 4.5, std::sqrt(42.0 / 8.0) / 4.5);
  EXPECT_DOUBLE_EQ(b.share[1], 8.0 / 36.0);
}

TEST(BalanceMetrics, ZeroTokensGiveZeros) {
  const LayerBalance b = layer_balance(std::vector<int64_t>(4, 0));
  EXPECT_EQ(b.tokens, 0);
  EXPECT_EQ(b.share, std::vector<double>(4, 0.0));
  expect_balance(b, 0.0, 0.0, 0.0);
  EXPECT_EQ(balance_summary(std::vector<LayerBalance>{b}), "");
}

TEST(BalanceMetrics, LayersOfTheStep) {
  const std::vector<int64_t> counts = {1, 1, 1, 1, 4, 0, 0, 0};  // two layers of four experts
  const std::vector<LayerBalance> layers = layer_balances(counts, 4);
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_DOUBLE_EQ(layers[0].busiest30_share, 0.5);  // ceil(1.2) = 2 experts of a balanced layer
  EXPECT_DOUBLE_EQ(layers[1].busiest30_share, 1.0);
  EXPECT_DOUBLE_EQ(layers[1].max_over_mean, 4.0);
  EXPECT_TRUE(layer_balances({}, 4).empty());   // no MoE layer
  EXPECT_TRUE(layer_balances(counts, 0).empty());
}

TEST(BalanceMetrics, MeanKAndDroppedFraction) {
  // two layers of four experts, 10 routed tokens: 16 and 12 slots, 4 and 0 of them dropped
  const std::vector<int64_t> counts = {4, 4, 4, 4, 6, 6, 0, 0}, dropped = {4, 0};
  const auto layers = layer_balances(counts, 4, dropped, 10);
  EXPECT_DOUBLE_EQ(layers[0].mean_k, 1.6);
  EXPECT_DOUBLE_EQ(layers[1].mean_k, 1.2);
  EXPECT_DOUBLE_EQ(layers[0].dropped_fraction, 0.25);
  EXPECT_DOUBLE_EQ(layers[1].dropped_fraction, 0.0);
  EXPECT_EQ(balance_summary(layers), "busiest30 0.75 (worst 1.00) max/mean 1.50 (worst 2.00) k 1.40 drop 0.125");
  EXPECT_EQ(per_layer_range(std::vector<float>{0.5f, -1.f, 2.f, 0.f, 0.25f, 0.25f}, 3),
            (std::vector<std::array<double, 2>>{{-1.0, 2.0}, {0.0, 0.25}}));
}

TEST(BalanceMetrics, SummaryOverLayers) {
  // busiest30 0.5 and 1.0, max/mean 1 and 4; the layer without tokens counts in neither
  const std::vector<LayerBalance> layers =
      layer_balances(std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0, 4, 0, 0, 0}, 4);
  EXPECT_EQ(balance_summary(layers), "busiest30 0.75 (worst 1.00) max/mean 2.50 (worst 4.00)");
  EXPECT_EQ(balance_summary({}), "");
}

}  // namespace
}  // namespace switchyard::launch
