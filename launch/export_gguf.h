// launch/export_gguf.h: `switchyard export --format gguf`, one GGUF v3 file for llama.cpp: which
// tensors, names, types and metadata a model gets (the container itself: core/formats/gguf.h).
//
// Mixtral-layout models (ModelConfig::qwen_layout() false) are written as llama.cpp's
// architecture `llama` with stacked expert tensors (llama.cpp's convert_hf_to_gguf.py names):
//   token_embd.weight [V, C]            output_norm.weight [C]      output.weight [V, C] (absent if tied)
//   blk.N.attn_norm.weight [C]          blk.N.ffn_norm.weight [C]
//   blk.N.attn_q.weight, attn_k, attn_v, attn_output (HF [out, in])
//   blk.N.ffn_gate_inp.weight [E, C]    (the router)
//   blk.N.ffn_gate_exps.weight [E, I, C] (w1), ffn_up_exps [E, I, C] (w3), ffn_down_exps [E, C, I] (w2)
// Shapes above are PyTorch order (outermost first); GGUF stores the dims innermost first, so a
// [out, in] matrix has ne = {in, out}; the bytes are the same C-order data.
// RoPE: HF applies rotate-half (pairs (i, i + d/2) of a head); llama.cpp's LLM_ARCH_LLAMA uses the
// interleaved form (pairs (2i, 2i + 1)). Like convert_hf_to_gguf.py (LlamaModel.permute), the rows
// of attn_q (per query head) and attn_k (per kv head) are permuted: within a head of d rows, GGUF
// row 2i + j = HF row j * d/2 + i (j = 0, 1), which makes the two conventions compute the same.
// Types: 1-D tensors and ffn_gate_inp in F32; the rest in --dtype (F32, F16 or BF16), rounded to
// nearest even (core/half.h). Data aligned to general.alignment = 32.
// Metadata: general.architecture "llama", general.name, general.alignment, general.file_type,
// llama.{block_count, context_length, embedding_length, feed_forward_length (expert size),
// attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
// rope.dimension_count, rope.freq_base, attention.layer_norm_rms_epsilon, expert_count,
// expert_used_count, vocab_size}, and the byte vocabulary as tokenizer.ggml.model "gpt2" with
// tokenizer.ggml.pre "default": token id b < 256 is GPT-2's bytes_to_unicode(b) (so every byte is
// one token and id = byte value, as in the HF export), no merges, ids >= 256 "<unused_N>";
// eos = padding = 0, no bos.
// Qwen2-MoE-layout models (qwen_layout() true) are written as llama.cpp's architecture `qwen2moe`
// (gguf 0.17.1 MODEL_TENSORS[QWEN2MOE]): the tensors above (experts from mlp.experts.N.{gate,up,
// down}_proj, router from mlp.gate) plus
//   blk.N.attn_q.bias, attn_k.bias, attn_v.bias (F32; zeros when the model has no q/k/v bias, as
//     in the HF export)
//   blk.N.ffn_gate_inp_shexp.weight [C] (HF shared_expert_gate [1, C]; F32)
//   blk.N.ffn_gate_shexp.weight [S, C], ffn_up_shexp [S, C], ffn_down_shexp [C, S] (the shared expert)
// and q/k NOT permuted: llama.cpp runs qwen2moe with NEOX rope, which is HF's rotate-half
// (convert_hf_to_gguf.py permutes only for LlamaModel). Metadata as above under "qwen2moe.", plus
// qwen2moe.expert_feed_forward_length (I), expert_shared_feed_forward_length (S) and
// expert_weights_norm = false. llama.cpp's qwen2moe graph hard-codes un-normalised top-k gates,
// an always-present sigmoid-gated shared expert and MoE in every layer, so these are usage errors:
// normalize_topk = true, shared_expert_size = 0, first_dense_layers > 0.
// Not supported (usage errors): the qwen2_moe cases above, --quantize with gguf.

#pragma once

#include <string>
#include <vector>

#include "core/config.h"

namespace switchyard::launch {

// Writes `path` (core/formats/durable.h), matrices in `dtype`. Returns {tensor count, file size}.
std::pair<size_t, uint64_t> export_gguf(const core::ModelConfig& model, const std::vector<float>& params,
                                        const std::string& path, core::Dtype dtype);

}  // namespace switchyard::launch
