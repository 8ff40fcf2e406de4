#include "data/sample_stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/half.h"

namespace switchyard::data {

namespace {

float h2f(uint16_t h) { return core::f16_to_f32(h); }
uint16_t f2h(double v) { return core::f32_to_f16(static_cast<float>(std::clamp(v, -60000.0, 60000.0))); }

double median_of(std::vector<float> v) {
  if (v.empty()) return 0;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  double m = v[mid];
  if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid)));
  return m;
}

}  // namespace

SampleStats::SampleStats(int64_t samples, const core::DataConfig& cfg)
    : cfg_(cfg),
      visits_(static_cast<size_t>(samples), 0),
      first_(visits_.size(), 0),
      ema_(visits_.size(), 0),
      excess_(visits_.size(), 0),
      slope_(visits_.size(), 0),
      draw_w_(visits_.size(), 1.f),
      flags_(visits_.size(), 0) {}

double SampleStats::update(const std::vector<SampleLoss>& visits) {
  std::vector<float> losses;
  losses.reserve(visits.size());
  for (const auto& v : visits) losses.push_back(v.loss);
  const double median = median_of(losses);
  const double b = cfg_.stats_ema;
  for (const auto& v : visits) {
    SY_CHECK(v.sample >= 0 && v.sample < size(), "sample {} of {}", v.sample, size());
    const auto i = static_cast<size_t>(v.sample);
    const double loss = v.loss, excess = loss - median;
    if (visits_[i] == 0) {
      first_[i] = f2h(loss);
      ema_[i] = f2h(loss);
      excess_[i] = f2h(excess);
      slope_[i] = f2h(0);
    } else {
      const double prev = h2f(excess_[i]);
      const double change = excess - prev;
      slope_[i] = f2h(visits_[i] == 1 ? change : b * h2f(slope_[i]) + (1 - b) * change);
      ema_[i] = f2h(b * h2f(ema_[i]) + (1 - b) * loss);
      excess_[i] = f2h(b * prev + (1 - b) * excess);
    }
    if (visits_[i] < 0xFFFF) ++visits_[i];
    if (scored_) rescore(i);
  }
  return median;
}

bool SampleStats::noise_on(int64_t step) const { return cfg_.noise.enabled && step >= cfg_.noise.warmup_steps; }
bool SampleStats::mining_on(int64_t step) const { return cfg_.mining.enabled && step >= cfg_.mining.warmup_steps; }

SampleScore SampleStats::score(int64_t s, int64_t step) const {
  SY_CHECK(s >= 0 && s < size(), "sample {} of {}", s, size());
  return score_with(static_cast<size_t>(s), noise_on(step), mining_on(step));
}

SampleScore SampleStats::score_with(size_t i, bool noise, bool mining) const {
  SampleScore r;
  r.visits = visits_[i];
  r.first = h2f(first_[i]);
  r.ema = h2f(ema_[i]);
  r.excess = h2f(excess_[i]);
  r.slope = h2f(slope_[i]);
  const auto& n = cfg_.noise;
  const auto& m = cfg_.mining;
  r.noisy = noise && r.visits >= n.min_visits && r.excess > n.threshold && r.slope > -n.max_slope;
  r.hard = mining && !r.noisy && r.visits >= m.min_visits && r.excess > m.threshold && r.slope <= 0;
  if (r.noisy) {
    r.draw_weight = static_cast<float>(n.sample_weight);
    r.loss_weight = static_cast<float>(n.loss_weight);
  } else if (r.hard) {
    r.draw_weight = static_cast<float>(std::min(m.max_weight, 1 + m.strength * r.excess));
  }
  return r;
}

void SampleStats::rescore(size_t i) {
  const SampleScore sc = score_with(i, gate_noise_, gate_mining_);
  const bool noisy = sc.noisy, hard = sc.hard;
  noisy_count_ += static_cast<int64_t>(noisy) - static_cast<int64_t>(flags_[i] & 1);
  hard_count_ += static_cast<int64_t>(hard) - static_cast<int64_t>((flags_[i] >> 1) & 1);
  flags_[i] = static_cast<uint8_t>(noisy | (hard << 1));
  draw_w_[i] = sc.draw_weight;
}

std::shared_ptr<const DrawWeights> SampleStats::draw_weights(int64_t step, const std::vector<double>& base) {
  SY_CHECK(base.empty() || static_cast<int64_t>(base.size()) == size(), "{} base weights for {} samples",
           base.size(), size());
  const bool noise = noise_on(step), mining = mining_on(step);
  if (!noise && !mining) {
    scored_ = false;
    if (base.empty()) return nullptr;
    if (!base_only_) {  // the blend's weights alone never change
      auto w = std::make_shared<DrawWeights>();
      w->cumulative.resize(base.size());
      double sum = 0;
      for (size_t s = 0; s < base.size(); ++s) w->cumulative[s] = sum += base[s];
      base_only_ = w;
    }
    return base_only_;
  }
  if (!scored_ || noise != gate_noise_ || mining != gate_mining_) {  // a warmup ended (or a table was loaded)
    gate_noise_ = noise;
    gate_mining_ = mining;
    std::fill(flags_.begin(), flags_.end(), 0);
    noisy_count_ = hard_count_ = 0;
    for (size_t i = 0; i < visits_.size(); ++i) rescore(i);
    scored_ = true;
  }
  auto w = std::make_shared<DrawWeights>();
  w->cumulative.resize(visits_.size());
  w->noisy.resize(visits_.size());
  w->noisy_loss_weight = static_cast<float>(cfg_.noise.loss_weight);
  w->noisy_count = noisy_count_;
  w->hard_count = hard_count_;
  float lo = draw_w_.empty() ? 1.f : draw_w_[0], hi = lo;
  double sum = 0;
  for (size_t s = 0; s < visits_.size(); ++s) {
    const float d = draw_w_[s];
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    sum += (base.empty() ? 1.0 : base[s]) * d;
    w->cumulative[s] = sum;
    w->noisy[s] = flags_[s] & 1;
  }
  w->min_weight = lo;
  w->max_weight = hi;
  return w;
}

std::vector<uint16_t> SampleStats::to_table() const {
  std::vector<uint16_t> t(visits_.size() * 5);
  for (size_t i = 0; i < visits_.size(); ++i) {
    t[i * 5 + 0] = visits_[i];
    t[i * 5 + 1] = first_[i];
    t[i * 5 + 2] = ema_[i];
    t[i * 5 + 3] = excess_[i];
    t[i * 5 + 4] = slope_[i];
  }
  return t;
}

void SampleStats::from_table(const std::vector<uint16_t>& t, const std::string& what) {
  if (t.size() != visits_.size() * 5)
    throw_usage("{}: per-sample statistics of {} samples, but this run's data has {}; resume with the same "
                "data.train, data.sample and train.seq_len", what, t.size() / 5, visits_.size());
  for (size_t i = 0; i < visits_.size(); ++i) {
    visits_[i] = t[i * 5 + 0];
    first_[i] = t[i * 5 + 1];
    ema_[i] = t[i * 5 + 2];
    excess_[i] = t[i * 5 + 3];
    slope_[i] = t[i * 5 + 4];
  }
  scored_ = false;  // every score is redone at the next draw_weights
}

}  // namespace switchyard::data
