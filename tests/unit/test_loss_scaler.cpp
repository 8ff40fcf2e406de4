// Loss-scaler rule table: growth, backoff, hysteresis, skip, minimum-scale stop, disabled scaler.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "optim/loss_scaler.h"

namespace switchyard {
namespace {

using optim::LossScaler;
using Outcome = LossScaler::Outcome;

core::LossScalerConfig small() {
  core::LossScalerConfig c;
  c.initial_scale = 64;
  c.growth_factor = 2;
  c.backoff_factor = 0.5;
  c.growth_interval = 3;
  c.hysteresis = 2;
  c.min_scale = 8;
  c.max_overflows_at_min = 2;
  return c;
}

struct Row {
  bool overflow;
  Outcome outcome;
  double scale_after;
};

// Every row: one optimizer step (overflow or clean), the outcome, the scale after the update.
TEST(LossScaler, RuleTable) {
  LossScaler s(small(), true);
  EXPECT_EQ(s.scale(), 64);
  const std::vector<Row> rows = {
      {false, Outcome::step, 64},   // clean 1
      {false, Outcome::step, 64},   // clean 2
      {false, Outcome::step, 128},  // clean 3: growth after growth_interval clean steps
      {false, Outcome::step, 128},  // clean 1 of the next interval
      {true, Outcome::skip, 128},   // overflow: skipped, hysteresis 2 -> 1, no backoff yet
      {false, Outcome::step, 128},  // the growth counter restarted: clean 1
      {false, Outcome::step, 128},  // clean 2
      {true, Outcome::skip, 64},    // overflow: hysteresis spent -> backoff
      {true, Outcome::skip, 32},    // budget stays spent: every overflow backs off
      {false, Outcome::step, 32},
      {false, Outcome::step, 32},
      {false, Outcome::step, 64},   // growth refills the hysteresis budget
      {true, Outcome::skip, 64},    // delayed again by hysteresis
      {true, Outcome::skip, 32},
      {true, Outcome::skip, 16},
      {true, Outcome::skip, 8},     // reaches min_scale
      {true, Outcome::skip, 8},     // at min: overflow 1 of max_overflows_at_min = 2, clamped
      {false, Outcome::step, 8},    // a clean step resets the at-min count
      {true, Outcome::skip, 8},     // at min: 1
      {true, Outcome::stop, 8},     // at min: 2 in a row -> stop
  };
  for (size_t i = 0; i < rows.size(); ++i) {
    const Outcome o = s.update(rows[i].overflow);
    EXPECT_EQ(static_cast<int>(o), static_cast<int>(rows[i].outcome)) << "row " << i;
    EXPECT_EQ(s.scale(), rows[i].scale_after) << "row " << i;
  }
  EXPECT_EQ(s.state().skipped_steps, 10);  // every overflow row, the stop included
}

TEST(LossScaler, DefaultsMatchTheIssue) {
  const core::LossScalerConfig c;
  EXPECT_EQ(c.initial_scale, 65536.0);
  EXPECT_EQ(c.growth_factor, 2.0);
  EXPECT_EQ(c.backoff_factor, 0.5);
  EXPECT_EQ(c.growth_interval, 1000);
  EXPECT_EQ(c.hysteresis, 2);
  EXPECT_EQ(c.min_scale, 1.0);
  LossScaler s(c, true);
  for (int i = 0; i < 999; ++i) ASSERT_EQ(s.update(false), Outcome::step);
  EXPECT_EQ(s.scale(), 65536.0);
  s.update(false);
  EXPECT_EQ(s.scale(), 131072.0);
}

TEST(LossScaler, StateRoundTripContinuesTheSameWay) {
  LossScaler a(small(), true), b(small(), true);
  for (bool o : {false, true, false, false}) a.update(o);
  b.set_state(a.state());
  for (bool o : {true, false, false, false, true, true}) {
    EXPECT_EQ(a.update(o), b.update(o));
    EXPECT_EQ(a.scale(), b.scale());
  }
}

TEST(LossScaler, DisabledKeepsScaleOneAndStopsOnOverflow) {
  LossScaler s(small(), false);
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(s.update(false), Outcome::step);
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(s.update(true), Outcome::stop);
}

}  // namespace
}  // namespace switchyard
