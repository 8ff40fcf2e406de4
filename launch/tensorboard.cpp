// launch/tensorboard.cpp: see tensorboard.h. The Event, Summary, SessionLog and HistogramProto
// field numbers are those of tensorboard/compat/proto/{event,summary,histogram}.proto.
#include "launch/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <span>

#include "core/error.h"
#include "core/formats/protobuf_wire.h"
#include "core/formats/tfrecord.h"
#include "launch/outputs.h"

namespace switchyard::launch {
namespace fs = std::filesystem;
using core::formats::ProtoWriter;

namespace {

// How a record key shows: one scalar "group/key"; one scalar per MoE layer
// "group/layer_N/key"; a [min, max] pair per MoE layer "group/layer_N/key_min" and "..._max";
// every member of an object "group/member"; one histogram per MoE layer "group/layer_N".
enum class Shape { scalar, per_layer, per_layer_range, members, per_layer_histogram };

struct TagRule {
  const char* key;    // in the metrics.jsonl record (launch/metrics.cpp step_json / eval_json)
  const char* group;  // the tag's first part
  Shape shape = Shape::scalar;
  const char* name = nullptr;  // the tag's last part, where it is not `key`
};

// The one table from metrics.jsonl keys to TensorBoard tags.
const TagRule kStepTags[] = {
    {"loss", "train"}, {"ce", "train"}, {"aux_loss", "train"}, {"z_loss", "train"}, {"lr", "train"},
    {"grad_norm", "train"}, {"loss_scale", "train"}, {"skipped", "train"}, {"skipped_steps", "train"},
    {"tokens_per_s", "throughput"}, {"mfu", "throughput"},
    {"step_ms", "time"}, {"forward_ms", "time"}, {"backward_ms", "time"}, {"reduce_ms", "time"},
    {"optimizer_ms", "time"}, {"expert_ms", "time"}, {"exchange_ms", "time"}, {"data_wait_ms", "time"},
    {"exchange_bytes_intra", "exchange"}, {"exchange_bytes_inter", "exchange"},
    {"exchange_messages_inter", "exchange"},
    {"memory_mb", "memory"}, {"memory_peak_mb", "memory"}, {"activation_mb", "memory"},
    {"activation_plan_mb", "memory"}, {"rss_peak_mb", "memory"},
    {"busiest30_share", "balance", Shape::per_layer}, {"max_over_mean", "balance", Shape::per_layer},
    {"load_cv", "balance", Shape::per_layer}, {"mean_k", "balance", Shape::per_layer},
    {"dropped_fraction", "balance", Shape::per_layer},
    {"selection_bias", "balance", Shape::per_layer_range}, {"expert_decay", "balance", Shape::per_layer_range},
    {"expert_load", "expert_load", Shape::per_layer_histogram},
    {"data", "data", Shape::members},
};
const TagRule kEvalTags[] = {{"eval_loss", "eval", Shape::scalar, "loss"},
                             {"eval_tokens", "eval", Shape::scalar, "tokens"}};

double number(const nlohmann::json& v) { return v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>(); }
bool is_number(const nlohmann::json& v) { return v.is_number() || v.is_boolean(); }

void add(TensorBoardValues& out, const TagRule& rule, const nlohmann::json& v) {
  const std::string name = rule.name ? rule.name : rule.key;
  const auto layer = [&](size_t l) { return fmt::format("{}/layer_{}", rule.group, l); };
  switch (rule.shape) {
    case Shape::scalar:
      if (is_number(v)) out.scalars.push_back({fmt::format("{}/{}", rule.group, name), number(v)});
      break;
    case Shape::per_layer:
      for (size_t l = 0; l < v.size(); ++l)
        if (is_number(v[l])) out.scalars.push_back({fmt::format("{}/{}", layer(l), name), number(v[l])});
      break;
    case Shape::per_layer_range:
      for (size_t l = 0; l < v.size(); ++l)
        if (v[l].is_array() && v[l].size() == 2 && is_number(v[l][0]) && is_number(v[l][1])) {
          out.scalars.push_back({fmt::format("{}/{}_min", layer(l), name), number(v[l][0])});
          out.scalars.push_back({fmt::format("{}/{}_max", layer(l), name), number(v[l][1])});
        }
      break;
    case Shape::members:
      for (const auto& [member, x] : v.items())
        if (is_number(x)) out.scalars.push_back({fmt::format("{}/{}", rule.group, member), number(x)});
      break;
    case Shape::per_layer_histogram:
      for (size_t l = 0; l < v.size(); ++l) {
        TensorBoardHistogram h{layer(l), {}};
        for (const auto& share : v[l]) h.buckets.push_back(is_number(share) ? number(share) : std::nan(""));
        out.histograms.push_back(std::move(h));
      }
      break;
  }
}

// A HistogramProto whose bucket i is [i, i+1) (expert i): min and max are the edges of the first
// and last non-empty buckets (TensorBoard draws those as the outer edges), and num, sum and
// sum_squares count each share as that many values equal to the expert's index.
std::string histogram_proto(const std::vector<double>& buckets) {
  std::vector<double> limits(buckets.size());
  double num = 0, sum = 0, sum_squares = 0;
  size_t first = buckets.size(), last = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    limits[i] = static_cast<double>(i + 1);
    const double b = buckets[i], x = static_cast<double>(i);
    num += b;
    sum += b * x;
    sum_squares += b * x * x;
    if (b > 0) first = std::min(first, i), last = i;
  }
  const bool empty = first == buckets.size();
  ProtoWriter h;
  h.fixed64(1, empty ? 0.0 : static_cast<double>(first));    // min
  h.fixed64(2, empty ? 0.0 : static_cast<double>(last + 1));  // max
  h.fixed64(3, num);
  h.fixed64(4, sum);
  h.fixed64(5, sum_squares);
  h.packed_doubles(6, limits);   // bucket_limit: the right edges
  h.packed_doubles(7, buckets);  // bucket
  return h.data();
}

// Event fields 1 (wall_time) and 2 (step), as a generated serializer writes them (zero omitted).
ProtoWriter event_head(double wall_time, int64_t step) {
  ProtoWriter e;
  if (wall_time != 0) e.fixed64(1, wall_time);
  if (step != 0) e.int64(2, step);
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A new file name: events.out.tfevents.<unix time>.<host>.<pid>.0, its time raised where needed
// so that it sorts after every event file already in `folder`.
std::string new_event_file_name(const fs::path& folder) {
  constexpr std::string_view prefix = "events.out.tfevents.";
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  std::string newest;
  for (const auto& e : fs::directory_iterator(folder)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0) newest = std::max(newest, n);
  }
  auto t = static_cast<int64_t>(now_seconds());
  const auto name = [&] { return fmt::format("{}{:010d}.{}.{}.0", prefix, t, host, getpid()); };
  if (name() <= newest) t = std::max<int64_t>(t, std::atoll(newest.c_str() + prefix.size())) + 1;
  return name();
}

}  // namespace

TensorBoardValues tensorboard_values(const nlohmann::json& record, bool eval) {
  TensorBoardValues out;
  for (const TagRule& rule : eval ? std::span<const TagRule>(kEvalTags) : std::span<const TagRule>(kStepTags))
    if (const auto it = record.find(rule.key); it != record.end()) add(out, rule, *it);
  return out;
}

std::string event_file_version(double wall_time) {
  ProtoWriter e = event_head(wall_time, 0);
  e.bytes(3, "brain.Event:2");
  return e.data();
}

std::string event_session_start(double wall_time, int64_t step) {
  ProtoWriter log;
  log.varint(1, 1);  // SessionLog.status = START
  ProtoWriter e = event_head(wall_time, step);
  e.bytes(7, log.data());  // Event.session_log
  return e.data();
}

std::string event_summary(double wall_time, int64_t step, const TensorBoardValues& values) {
  ProtoWriter summary;
  for (const TensorBoardScalar& s : values.scalars) {
    ProtoWriter v;
    v.bytes(1, s.tag);
    v.fixed32(2, static_cast<float>(s.value));  // simple_value
    summary.bytes(1, v.data());
  }
  for (const TensorBoardHistogram& h : values.histograms) {
    ProtoWriter v;
    v.bytes(1, h.tag);
    v.bytes(5, histogram_proto(h.buckets));  // histo
    summary.bytes(1, v.data());
  }
  ProtoWriter e = event_head(wall_time, step);
  e.bytes(5, summary.data());
  return e.data();
}

void TensorBoardWriter::start(int64_t start_step) {
  const std::vector<std::string> entries = {"events.out.tfevents.*"};
  check_output_folder(folder_, kWriterTensorBoard, entries, /*overwrite=*/true, "observe.tensorboard's folder", "");
  require_writable_folder(folder_, "observe.tensorboard's folder");
  mark_folder(folder_, kWriterTensorBoard, entries);
  path_ = folder_ / new_event_file_name(folder_);
  f_ = std::fopen(path_.c_str(), "wb");
  if (!f_)
    throw_usage("observe.tensorboard: cannot create {} ({}); check that the run folder is writable", path_.string(),
                std::strerror(errno));
  const double now = now_seconds();
  write(event_file_version(now), 0);
  if (start_step > 0) write(event_session_start(now, start_step + 1), start_step + 1);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::write(const std::string& event, int64_t step) {
  SY_CHECK(f_, "{}: written after close()", path_.string());
  const std::string record = core::formats::tfrecord_frame(event);
  if (std::fwrite(record.data(), 1, record.size(), f_) != record.size() || std::fflush(f_) != 0)
    throw_usage("{}: cannot write the TensorBoard event of step {} ({}); free disk space, then continue with "
                "`switchyard train --resume`", path_.string(), step, std::strerror(errno));
}

void TensorBoardWriter::step(const nlohmann::json& record) {
  const int64_t step = record.at("step").get<int64_t>();
  const double wall_time = record.contains("time") ? record["time"].get<double>() : now_seconds();
  write(event_summary(wall_time, step, tensorboard_values(record, /*eval=*/false)), step);
}

void TensorBoardWriter::eval(const nlohmann::json& record) {
  const int64_t step = record.at("step").get<int64_t>();
  write(event_summary(now_seconds(), step, tensorboard_values(record, /*eval=*/true)), step);
}

void TensorBoardWriter::close() {
  if (f_ && std::fclose(f_) != 0)
    throw_usage("{}: cannot close the TensorBoard event file ({}); free disk space", path_.string(),
                std::strerror(errno));
  f_ = nullptr;
}

}  // namespace switchyard::launch
