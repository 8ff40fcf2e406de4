// launch/generate.h: the `generate` subcommand: text sampled from a byte-level model (vocab 256:
// token = byte, token 0 ends a document), greedy (temperature 0) or with temperature and top-p
// from a seeded counter RNG (core/rng.h), and the decoding rate in tokens/s.
//
// Decoding runs through the model's KV cache (Model::decode): the prompt in one pass, then one
// token per step (docs/ARCHITECTURE.md, "Sampling text").
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/choices.h"
#include "moe/model.h"

namespace switchyard::launch {

struct GenerateOptions {
  std::string init_from;   // Hugging Face folder
  std::string checkpoint;  // checkpoint or run folder (launch/model_io.h load_model_source)
  std::string prompt;      // text, its bytes are the tokens after a leading 0 (a document start)
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0: greedy (argmax)
  double top_p = 1.0;        // nucleus: sample among the most probable tokens holding this mass
  uint64_t seed = 0;
  core::Device device = core::Device::cpu;
  int threads = 0;
  bool allow_nonfinite = false;
};
// Prints the prompt and its continuation on stdout, the token count and rate on stderr; returns
// the exit code. Bad options are usage errors (exit 2).
int run_generate(const GenerateOptions& opts);

struct SamplingOptions {
  double temperature = 1.0;  // >= 0; 0: argmax, ties to the lower index
  double top_p = 1.0;        // in (0, 1]
  uint64_t seed = 0;
};
// The token drawn from one row of logits at decoding step `step` (the draw is a pure function of
// seed and step): softmax(logits / temperature) cut to the smallest set of most probable tokens
// (ties to the lower index) whose mass reaches top_p, renormalised.
int32_t sample_token(std::span<const float> logits, const SamplingOptions& s, uint64_t step);

struct Generation {
  std::vector<int32_t> tokens;  // the new tokens, without the end-of-document 0 that stopped them
  bool ended = false;           // stopped at a token 0 (else at max_new)
  double seconds = 0;           // decoding time (every forward and draw)
};
// Appends up to max_new tokens to `context` (tokens of the model's vocabulary, not empty), stopping
// after a token 0. The model holds decode_capacity() positions (build it with one row of
// min(max_seq_len, context + max_new)); past them the context is its last decode_capacity() tokens.
Generation generate_tokens(moe::Model& model, std::vector<int32_t> context, int64_t max_new,
                           const SamplingOptions& s);

}  // namespace switchyard::launch
