// launch/export.h: `switchyard export`, a checkpoint -> the Hugging Face layout that transformers,
// vLLM and `--init-from` load.
//
// Input (--checkpoint): a checkpoint folder (step-NNNNNN/ with manifest.json), a checkpoint
// directory (its `latest`), or a run folder (its checkpoints/latest, else its model/ folder). The
// checkpoint may have been written by any number of ranks: the parameters are read by name.
// Output (--out), written into `<out>.tmp-<pid>/`, then moved into place. An --out that holds
// anything is refused unless --overwrite; then only what an earlier export wrote there goes
// (launch/outputs.h: other files stay, a name export writes that it does not own is an error):
//   config.json                      mixtral / MixtralForCausalLM, or qwen2_moe / Qwen2MoeForCausalLM
//                                    (ModelConfig::qwen_layout()); torch_dtype = --dtype
//   model-0000i-of-0000n.safetensors tensors by HF name in parameter-table order, each shard at most
//                                    --max-shard-size bytes of data (a larger tensor gets its own)
//   model.safetensors.index.json     {"metadata": {"total_size": data bytes}, "weight_map": {...}}
//   generation_config.json           eos = pad = token 0
//   tokenizer.json, tokenizer_config.json, special_tokens_map.json
//                                    the byte-level tokenizer: a `tokenizers` BPE model without merges
//                                    over the 256 tokens "<0xXX>" (id = byte) with byte_fallback, so
//                                    every UTF-8 byte of a text is one token; decoder ByteFallback +
//                                    Fuse. Token 0 ("<0x00>", the end-of-document byte) is eos.
// bf16 / fp16 round fp32 to nearest even (core/half.h).
// --format gguf (launch/export_gguf.h): one GGUF v3 file --out for llama.cpp instead.
// --quantize int8 (launch/export_int8.h): the linear weights as I8 + `<name>_scale` F32, the rest in
// --dtype; needs --eval-data and prints the eval loss before / after as a JSON line first.
#pragma once

#include <cstdint>
#include <string>

#include "core/choices.h"

namespace switchyard::launch {

struct ExportOptions {
  std::string checkpoint;
  std::string out;
  core::Dtype dtype = core::Dtype::bf16;  // the weights' dtype (norms, routers, biases: fp32)
  std::string max_shard_size = "5GB";
  std::string format = "hf";     // hf, or gguf (launch/export_gguf.h: --out is the .gguf file)
  std::string quantize;         // "" or "int8"
  std::string eval_data;        // token file for the --quantize report
  int64_t eval_windows = 16;
  int64_t eval_seq_len = 0;     // 0: the model's max_seq_len
  bool overwrite = false;       // --overwrite: replace an earlier export (or GGUF file) at --out
  bool allow_nonfinite = false; // export weights holding inf/NaN instead of refusing them
};

// "5GB" (10^9), "500MB", "2000KB", "1GiB" (2^30), "123" or "123B" -> bytes; a usage Error otherwise.
uint64_t parse_byte_size(const std::string& text);

// Prints one JSON line {"out", "shards", "total_size", "dtype", "source"}; returns the exit code.
int run_export(const ExportOptions& opts);

}  // namespace switchyard::launch
