// launch/export.cpp: see export.h for the layout written.
#include "launch/export.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/formats/gguf.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"
#include "core/params.h"
#include "data/token_source.h"
#include "launch/checkpoint.h"
#include "launch/export_gguf.h"
#include "launch/export_int8.h"
#include "launch/model_io.h"
#include "launch/nonfinite.h"
#include "launch/outputs.h"

namespace switchyard::launch {
namespace fs = std::filesystem;
namespace formats = core::formats;
using ojson = nlohmann::ordered_json;

uint64_t parse_byte_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit = text.substr(i);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  static const std::pair<const char*, uint64_t> kUnits[] = {
      {"", 1},           {"B", 1},          {"KB", 1000ull},      {"MB", 1000000ull},   {"GB", 1000000000ull},
      {"TB", 1000000000000ull}, {"KIB", 1ull << 10}, {"MIB", 1ull << 20}, {"GIB", 1ull << 30}, {"TIB", 1ull << 40}};
  const auto* u = std::find_if(std::begin(kUnits), std::end(kUnits), [&](const auto& x) { return unit == x.first; });
  if (i == 0 || i > 15 || u == std::end(kUnits))
    throw_usage("--max-shard-size '{}': expected a whole number of bytes with an optional unit (B, KB, MB, GB, "
                "TB, KiB, MiB, GiB), e.g. 5GB or 500MB", text);
  const uint64_t count = std::stoull(text.substr(0, i)), n = count * u->second;
  if (count == 0) throw_usage("--max-shard-size '{}': must be at least 1 byte", text);
  if (n / u->second != count) throw_usage("--max-shard-size '{}': too large", text);
  return n;
}

namespace {


// Every export layout (Hugging Face mixtral / qwen2_moe, GGUF llama / qwen2moe) routes by a
// softmax top-k without a bias: a model that needs more is refused, never exported with its
// routing silently changed.
void require_expressible_routing(const core::ModelConfig& m, const std::string& from, const std::string& format) {
  const std::string what = core::formats::hf_routing_unsupported(m);
  if (!what.empty())
    throw_usage("export {}: the {} layout ({}) cannot express {}; the model's routing would change (no DeepSeek-V3 "
                "layout is written yet)", from, m.qwen_layout() ? "qwen2_moe" : "mixtral", format, what);
}


std::string byte_token(int b) { return fmt::format("<0x{:02X}>", b); }

ojson special_token(int id, const std::string& content) {
  return {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},   {"normalized", false}, {"special", true}};
}

// tokenizers' JSON: a BPE model without merges whose vocabulary is the byte tokens, with
// byte_fallback, so every character becomes the tokens of its UTF-8 bytes (id = byte value).
ojson tokenizer_json(int64_t vocab_size) {
  ojson vocab = ojson::object();
  for (int64_t id = 0; id < vocab_size; ++id)
    vocab[id < 256 ? byte_token(static_cast<int>(id)) : fmt::format("<unused_{}>", id)] = id;
  ojson model = {{"type", "BPE"},        {"dropout", nullptr},   {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr},         {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false},    {"byte_fallback", true},
                 {"vocab", vocab},       {"merges", ojson::array()}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", ojson::array({special_token(0, byte_token(0))})},
          {"normalizer", nullptr},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", {{"type", "Sequence"}, {"decoders", ojson::array({{{"type", "ByteFallback"}},
                                                                        {{"type", "Fuse"}}})}}},
          {"model", model}};
}

ojson tokenizer_config_json(int64_t max_len) {
  ojson added = ojson::object();
  added["0"] = special_token(0, byte_token(0));
  added["0"].erase("id");
  return {{"tokenizer_class", "PreTrainedTokenizerFast"},
          {"add_bos_token", false},
          {"add_eos_token", false},
          {"added_tokens_decoder", added},
          {"bos_token", nullptr},
          {"eos_token", byte_token(0)},
          {"pad_token", byte_token(0)},
          {"unk_token", nullptr},
          {"clean_up_tokenization_spaces", false},
          {"model_max_length", max_len}};
}

// What an export folder holds that `export` wrote (outputs.h), temporaries included.
const std::vector<std::string> kExportEntries = {"config.json*", "generation_config.json*", "model-*",
                                                 "model.safetensors*", "tokenizer*", "special_tokens_map.json*"};

// Moves the files of `tmp` into `out`, which check_output_folder has cleared for it: missing,
// empty, or holding an earlier export (removed now) and files of others (kept).
void install(const fs::path& tmp, const fs::path& out) {
  if (folder_writer(out) == kWriterExport) remove_owned(out);
  std::error_code ec;
  if (fs::is_directory(out) && fs::is_empty(out)) fs::remove(out, ec);
  if (!fs::exists(out)) {
    formats::rename_durable(tmp, out);
  } else {
    for (const auto& e : fs::directory_iterator(tmp)) {
      fs::rename(e.path(), out / e.path().filename(), ec);
      if (ec) throw_usage("cannot move {} into {}: {}", e.path().string(), out.string(), ec.message());
    }
    formats::fsync_path(out, /*directory=*/true);  // the moved names on disk
    fs::remove(tmp, ec);
  }
  mark_folder(out, kWriterExport, kExportEntries);
}

// A GGUF file is replaced only with --overwrite, and only where it is a GGUF file.
void check_gguf_target(const fs::path& out, bool overwrite) {
  if (!fs::exists(fs::symlink_status(out))) return;
  if (!overwrite)
    throw_usage("export --out {}: exists; pass --overwrite to replace it, or choose another --out", out.string());
  if (!formats::is_gguf_file(out.string()))
    throw_usage("export --out {}: exists and is not a GGUF file; not replacing it: choose another --out", out.string());
}

}  // namespace

int run_export(const ExportOptions& opts) {
  if (opts.checkpoint.empty() || opts.out.empty()) throw_usage("export: give --checkpoint DIR and --out DIR");
  const std::string dtype = formats::safetensors_dtype(opts.dtype);
  const uint64_t max_shard = parse_byte_size(opts.max_shard_size);
  fs::path out(opts.out);
  if (!out.has_filename()) out = out.parent_path();

  if (opts.format == "gguf") {
    if (!opts.quantize.empty())
      throw_usage("export --format gguf --quantize {}: not supported (GGUF is written in --dtype only)", opts.quantize);
    if (fs::is_directory(out))
      throw_usage("export --format gguf --out {}: is a folder; give the .gguf file to write", opts.out);
    if (out.has_parent_path() && !fs::is_directory(out.parent_path()))
      throw_usage("export --format gguf --out {}: no folder {}", opts.out, out.parent_path().string());
    check_gguf_target(out, opts.overwrite);
    require_writable_folder(out.has_parent_path() ? out.parent_path() : fs::path("."), "export --out's folder");
    const ModelSource src = load_model_source(opts.checkpoint, "export --checkpoint");
    require_expressible_routing(src.config, src.from, "gguf");
    require_finite_weights(src.config, src.params, src.from, opts.allow_nonfinite);
    const auto [count, size] = export_gguf(src.config, src.params, out.string(), opts.dtype);
    fmt::print("{}\n", ojson{{"out", out.string()}, {"format", "gguf"}, {"tensors", count}, {"size", size},
                             {"dtype", std::string(core::name_of(opts.dtype))}, {"source", src.from}}.dump());
    return 0;
  }
  if (opts.format != "hf") throw_usage("export --format {}: expected hf or gguf", opts.format);
  if (!opts.quantize.empty() && opts.quantize != "int8")
    throw_usage("export --quantize {}: expected int8", opts.quantize);
  const bool int8 = opts.quantize == "int8";
  check_output_folder(out, kWriterExport, kExportEntries, opts.overwrite, "export --out", "choose another --out");
  require_writable_folder(out.has_parent_path() ? out.parent_path() : fs::path("."), "export --out's folder");
  if (int8 && opts.eval_data.empty())
    throw_usage("export --quantize int8 needs --eval-data FILE (a token file) for the eval-loss report");
  if (!int8 && !opts.eval_data.empty())
    throw_usage("export --eval-data {}: only used with --quantize int8 (the eval-loss report)", opts.eval_data);
  if (int8 && opts.eval_windows < 1) throw_usage("export --eval-windows {}: must be at least 1", opts.eval_windows);
  if (int8 && !fs::is_regular_file(opts.eval_data))
    throw_usage("export --eval-data {}: no such file", opts.eval_data);
  // the valid split of an HDF5 token file when it has one, else its train split (an llm.c shard is
  // read whole); opened here so that a bad file fails before anything is written
  const std::string eval_split = int8 && data::token_file_has_split(opts.eval_data, "valid") ? "valid" : "train";
  if (int8) data::open_token_source(opts.eval_data, eval_split);

  const ModelSource src = load_model_source(opts.checkpoint, "export --checkpoint");
  require_expressible_routing(src.config, src.from, "hf");
  require_finite_weights(src.config, src.params, src.from, opts.allow_nonfinite);
  if (int8 && opts.eval_seq_len > src.config.max_seq_len)
    throw_usage("export --eval-seq-len {} exceeds the model's max_seq_len {} ({})", opts.eval_seq_len,
                src.config.max_seq_len, src.from);
  const core::ParamTable table = core::make_param_table(src.config);
  const std::vector<formats::HfTensor> tensors = formats::hf_tensors(src.config, table, src.params.data());

  // What the files hold: each tensor in --dtype, or (int8) its I8 data then its F32 scales.
  struct Entry {
    std::string name, dtype;
    std::vector<int64_t> shape;
    size_t tensor;     // index into tensors
    int part;          // 0: the tensor in --dtype, 1: int8 data, 2: int8 scales
    uint64_t bytes;
  };
  std::vector<Entry> entries;
  std::vector<Int8Tensor> quantized(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const formats::HfTensor& t = tensors[i];
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (int8 && int8_quantized_tensor(t.name, t.shape)) {
      quantized[i] = quantize_int8(t.data, t.shape[0], t.shape[1]);
      entries.push_back({t.name, "I8", t.shape, i, 1, static_cast<uint64_t>(numel)});
      entries.push_back({t.name + "_scale", "F32", {t.shape[0]}, i, 2, static_cast<uint64_t>(t.shape[0]) * 4});
    } else {
      entries.push_back({t.name, dtype, t.shape, i, 0,
                         static_cast<uint64_t>(numel) * formats::safetensors_dtype_size(dtype)});
    }
  }

  // shards: entries in order, a new shard when the next entry would pass max_shard
  std::vector<std::vector<size_t>> shards;
  uint64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const uint64_t bytes = entries[i].bytes;
    if (shards.empty() || (in_shard > 0 && in_shard + bytes > max_shard)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }

  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  const fs::path tmp = out.string() + fmt::format(".tmp-{}", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw_usage("export --out {}: cannot create {}: {}", opts.out, tmp.string(), ec.message());
  try {
    ojson weight_map = ojson::object();
    const size_t n = shards.size();
    for (size_t s = 0; s < n; ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n);
      std::vector<std::vector<uint8_t>> bufs(shards[s].size());
      std::vector<formats::TensorWrite> writes;
      for (size_t k = 0; k < shards[s].size(); ++k) {
        const Entry& en = entries[shards[s][k]];
        const void* data = nullptr;
        if (en.part == 0) {
          const size_t numel = static_cast<size_t>(en.bytes / formats::safetensors_dtype_size(dtype));
          formats::from_f32(tensors[en.tensor].data, numel, dtype, bufs[k]);
          data = bufs[k].data();
        } else {
          data = en.part == 1 ? static_cast<const void*>(quantized[en.tensor].q.data())
                              : static_cast<const void*>(quantized[en.tensor].scale.data());
        }
        writes.push_back({en.name, en.dtype, en.shape, data});
        weight_map[en.name] = file;
      }
      formats::write_safetensors((tmp / file).string(), writes, {{"format", "pt"}});
    }
    const ojson index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    formats::write_text_durable((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    nlohmann::json config = formats::hf_config_json(src.config, opts.dtype);
    if (int8) config["quantization_config"] = int8_quantization_config();
    formats::write_text_durable((tmp / "config.json").string(), config.dump(2) + "\n");
    const ojson gen = {{"eos_token_id", 0}, {"pad_token_id", 0}, {"bos_token_id", nullptr}};
    formats::write_text_durable((tmp / "generation_config.json").string(), gen.dump(2) + "\n");
    formats::write_text_durable((tmp / "tokenizer.json").string(), tokenizer_json(src.config.vocab_size).dump(2) + "\n");
    formats::write_text_durable((tmp / "tokenizer_config.json").string(),
                    tokenizer_config_json(src.config.max_seq_len).dump(2) + "\n");
    const ojson special = {{"eos_token", byte_token(0)}, {"pad_token", byte_token(0)}};
    formats::write_text_durable((tmp / "special_tokens_map.json").string(), special.dump(2) + "\n");
    install(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (src.config.vocab_size < 256)
    fmt::print(stderr, "export: warning: vocab_size {} < 256: bytes >= {} have no token in tokenizer.json\n",
               src.config.vocab_size, src.config.vocab_size);
  if (int8)
    fmt::print("{}\n", int8_eval_report(src.config, src.params, out.string(), opts.eval_data, eval_split,
                                        opts.eval_windows,
                                        opts.eval_seq_len).dump());
  fmt::print("{}\n", ojson{{"out", out.string()}, {"shards", shards.size()}, {"total_size", total},
                           {"dtype", std::string(core::name_of(opts.dtype))},
                           {"quantize", int8 ? "int8" : "none"}, {"source", src.from}}.dump());
  return 0;
}

}  // namespace switchyard::launch
