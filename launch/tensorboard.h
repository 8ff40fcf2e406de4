// launch/tensorboard.h: TensorBoard event files of a run (observe.tensorboard), in
// <run folder>/tensorboard. Every metrics.jsonl record becomes one Event: the record's scalars under
// grouped tags ("train/loss", "time/step_ms", "balance/layer_0/busiest30_share", "eval/loss"; the
// table in tensorboard.cpp is the one place that maps record keys to tags) and, per MoE layer, a
// histogram "expert_load/layer_N" whose buckets are the experts (bucket i = [i, i+1) holds expert
// i's share of the routed tokens), so TensorBoard's histogram view shows the load over the experts
// step by step.
//
// Files are TFRecord-framed Event protobufs (core/formats/tfrecord.h, protobuf_wire.h), named
// events.out.tfevents.<unix time>.<host>.<pid>.<n> (what TensorBoard globs), flushed after every
// record so a killed run keeps its events. A resumed run writes a new file that sorts after the
// earlier ones (TensorBoard reads a folder's files in name order) and starts with a SessionLog
// START at its first new step: TensorBoard then drops the earlier files' events at or after that
// step, so every step shows once, with the values of the resumed run. The folder carries its own
// ownership marker (launch/outputs.h): Switchyard removes only event files it wrote.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/observers.h"

namespace switchyard::launch {

struct TensorBoardScalar {
  std::string tag;
  double value;
};
struct TensorBoardHistogram {
  std::string tag;
  std::vector<double> buckets;  // bucket i: expert i's share
};
struct TensorBoardValues {
  std::vector<TensorBoardScalar> scalars;
  std::vector<TensorBoardHistogram> histograms;
};

// What a step_json record, or (eval = true) an eval_json record, shows in TensorBoard; keys the
// record lacks (loss_scale without fp16, data without a data layer) give no tag.
TensorBoardValues tensorboard_values(const nlohmann::json& record, bool eval);

// The serialized Event protobufs (before framing).
std::string event_file_version(double wall_time);  // file_version "brain.Event:2", the first event of a file
std::string event_session_start(double wall_time, int64_t step);
std::string event_summary(double wall_time, int64_t step, const TensorBoardValues& values);

class TensorBoardWriter : public RunObserver {
 public:
  // start() opens a new event file in `folder` (created, marked and checked by launch/outputs.h's
  // rule; a usage error naming observe.tensorboard when it cannot be); `start_step` > 0 (a resumed
  // run) writes the SessionLog START at step start_step + 1.
  explicit TensorBoardWriter(std::filesystem::path folder) : folder_(std::move(folder)) {}
  void start(int64_t start_step) override;
  ~TensorBoardWriter() override;
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void step(const nlohmann::json& record) override;
  void eval(const nlohmann::json& record) override;
  void close() override;
  const std::filesystem::path& path() const { return path_; }

 private:
  void write(const std::string& event, int64_t step);
  std::filesystem::path folder_, path_;
  std::FILE* f_ = nullptr;
};

}  // namespace switchyard::launch
