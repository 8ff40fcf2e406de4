#include "data/train_data.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "core/error.h"
#include "core/formats/hdf5.h"

namespace switchyard::data {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kBlendDomain = 0x626c656eull;  // "blen"

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

TrainData::TrainData(const core::ExperimentConfig& cfg, int rank, int world, int64_t micro_batch)
    : cfg_(cfg.data),
      rank_(rank),
      world_(world),
      B_(micro_batch),
      T_(cfg.train.seq_len),
      accum_(cfg.train.grad_accum),
      steps_total_(cfg.train.steps),
      vocab_(cfg.model.vocab_size),
      seed_(static_cast<uint64_t>(cfg.train.seed)),
      documents_(cfg.data.sample == core::SampleUnit::document) {
  SY_CHECK(!cfg_.train.empty(), "data.train is empty");
  // a second thread may read HDF5 only where the library is thread-safe (else: inline, said once)
  const bool any_hdf5 = std::any_of(cfg_.train.items.begin(), cfg_.train.items.end(), [](const auto& src) {
    return detect_token_file_format(src.path) == TokenFileFormat::hdf5;
  });
  if (cfg_.prefetch && any_hdf5 && !core::formats::hdf5_threadsafe()) {
    cfg_.prefetch = false;
    if (rank == 0)
      fmt::print(stderr, "switchyard train: note: this HDF5 library is not thread-safe, so data.prefetch is off "
                         "(a Megatron .bin/.idx dataset is read without HDF5)\n");
  }
  double total = 0;
  for (const auto& src : cfg_.train.items) total += src.weight;
  std::vector<const TokenSource*> raw;
  for (const auto& src : cfg_.train.items) {
    sources_.push_back(open_token_source(src.path, "train"));
    raw.push_back(sources_.back().get());
    source_cumulative_.push_back((source_cumulative_.empty() ? 0.0 : source_cumulative_.back()) + src.weight / total);
  }
  if (!documents_) {
    for (const auto* src : raw)
      windows_.push_back(std::make_unique<WindowSampler>(*src, T_, vocab_, seed_, rank_, world_, accum_));
    return;
  }
  for (const auto* src : raw)
    if (src->vocab_hint() > vocab_)
      throw_usage("{} was made for a vocabulary of {} tokens, larger than model.vocab_size = {}", src->describe(),
                  src->vocab_hint(), vocab_);
  index_ = std::make_unique<SampleIndex>(raw, T_);
  if (cfg_.train.blend()) {
    base_.resize(static_cast<size_t>(index_->size()));
    for (int i = 0; i < index_->sources(); ++i) {
      const int64_t n = index_->first_sample(i + 1) - index_->first_sample(i);
      const double w = cfg_.train.items[static_cast<size_t>(i)].weight / total / static_cast<double>(n);
      std::fill(base_.begin() + index_->first_sample(i), base_.begin() + index_->first_sample(i + 1), w);
    }
  }
  stats_ = std::make_unique<SampleStats>(index_->size(), cfg_);
  batcher_ = std::make_unique<DocumentBatcher>(*index_, raw, vocab_, seed_, rank_, world_, cfg_.packing);
  weights_now_ = weights_lagged_ = stats_->draw_weights(0, base_);
}

TrainData::~TrainData() {
  try {
    settle();
  } catch (...) {  // the run is already ending with the error that matters
  }
}

StepBatches TrainData::build(int64_t step, std::shared_ptr<const DrawWeights> weights) {
  const auto t0 = Clock::now();
  StepBatches sb;
  sb.step = step;
  sb.weights = std::move(weights);
  for (int64_t micro = 0; micro < accum_; ++micro) {
    if (documents_) {
      sb.micro.push_back(batcher_->next(B_, sb.weights.get()));
      continue;
    }
    MicroBatch mb;
    mb.B = B_;
    mb.T = T_;
    mb.tokens.resize(static_cast<size_t>(B_ * T_));
    mb.targets.resize(mb.tokens.size());
    if (windows_.size() == 1) {
      windows_[0]->next_batch(step, micro, B_, mb.tokens.data(), mb.targets.data());
    } else {
      for (int64_t i = 0; i < B_; ++i) {
        const int64_t g = windows_[0]->global_index(step, micro, B_, i);
        const double u =
            static_cast<double>(splitmix64_at(seed_ ^ kBlendDomain, static_cast<uint64_t>(g)) >> 11) * 0x1.0p-53;
        const auto it = std::upper_bound(source_cumulative_.begin(), source_cumulative_.end(), u);
        const size_t src = std::min<size_t>(static_cast<size_t>(it - source_cumulative_.begin()), windows_.size() - 1);
        windows_[src]->read_sample(g, mb.tokens.data() + i * T_, mb.targets.data() + i * T_);
      }
    }
    sb.micro.push_back(std::move(mb));
  }
  if (batcher_) sb.state_after = batcher_->state();
  sb.prepare_s = seconds_since(t0);
  return sb;
}

StepBatches TrainData::take(int64_t step) {
  const auto t0 = Clock::now();
  StepBatches sb;
  if (pending_ && pending_step_ == step) {
    sb = pending_->get();
    pending_.reset();
  } else {
    SY_CHECK(!pending_, "data for step {} taken while step {} was being prepared", step, pending_step_);
    // step s (0-based) draws with the table of steps 0 .. s-2: the lagged weights
    sb = build(step, weights_lagged_);
  }
  sb.wait_s = seconds_since(t0);
  last_state_ = sb.state_after;
  pending_step_ = -1;
  if (cfg_.prefetch && step + 1 < steps_total_) {  // step s+1: the table of steps 0 .. s-1, the newest
    pending_step_ = step + 1;
    pending_.emplace(std::async(std::launch::async, [this, next = step + 1, w = weights_now_] { return build(next, w); }));
  }
  return sb;
}

void TrainData::settle() {
  if (!pending_) return;
  pending_->wait();
}

double TrainData::record(const std::vector<SampleLoss>& visits, int64_t step) {
  SY_CHECK(documents_, "record() in window mode");
  SY_CHECK(step == steps_, "record for step {} after {} steps", step, steps_);
  const double median = stats_->update(visits);
  steps_ = step + 1;
  weights_lagged_ = weights_now_;
  weights_now_ = stats_->draw_weights(steps_, base_);
  return median;
}

DataState TrainData::state() const {
  DataState s;
  s.steps = steps_;
  if (!documents_) return s;
  s.table = stats_->to_table();
  s.lagged = weights_lagged_;
  s.ranks = {last_state_};
  return s;
}

void TrainData::restore(const DataState& s, const std::string& what) {
  if (!documents_) return;
  if (pending_) {
    pending_->wait();
    pending_.reset();
  }
  stats_->from_table(s.table, what);
  if (s.lagged && static_cast<int64_t>(s.lagged->cumulative.size()) != index_->size())
    throw_usage("{}: draw weights of {} samples, but this run's data has {}; resume with the same data.train, "
                "data.sample and train.seq_len", what, s.lagged->cumulative.size(), index_->size());
  steps_ = s.steps;
  pending_step_ = -1;
  if (static_cast<int>(s.ranks.size()) == world_) {
    last_state_ = s.ranks[static_cast<size_t>(rank_)];
  } else {  // another number of ranks: each rank starts a fresh stream past every saved draw
    if (rank_ == 0)
      fmt::print(stderr, "switchyard train: note: {} was written by {} rank(s), this run has {}: the statistics "
                         "resume, the draws continue on fresh streams (not the uninterrupted run's order)\n",
                 what, s.ranks.size(), world_);
    int64_t drawn = 0;
    for (const auto& r : s.ranks) drawn = std::max(drawn, r.drawn);
    last_state_ = DrawState{drawn * static_cast<int64_t>(s.ranks.size()) / world_ + 1, {}};
  }
  for (const auto& r : last_state_.pool)
    if (r < 0 || r >= index_->size())
      throw_usage("{}: the saved draw state names sample {}, but this run's data has {}; resume with the same "
                  "data.train, data.sample and train.seq_len", what, r, index_->size());
  batcher_->set_state(last_state_);
  weights_now_ = stats_->draw_weights(steps_, base_);
  weights_lagged_ = nullptr;
  if (s.lagged) {  // the loss weight of a noisy sample is the config's
    auto w = std::make_shared<DrawWeights>(*s.lagged);
    w->noisy_loss_weight = static_cast<float>(cfg_.noise.loss_weight);
    weights_lagged_ = std::move(w);
  }
}

}  // namespace switchyard::data
