// launch/main.cpp: the `switchyard` command.
//   train    launch/train.h      the training loop (YAML config, --set overrides, --init-from,
//                                --resume from a checkpoint, launch/checkpoint.h)
//   eval     launch/commands.h   mean token loss over consecutive windows of a token file
//   prepare  launch/commands.h   text files -> HDF5 token file or Megatron dataset (data/prepare.h)
//   export   launch/export.h     checkpoint -> Hugging Face layout (sharded safetensors, tokenizer;
//                                --quantize int8), or GGUF for llama.cpp (launch/export_gguf.h)
//   plan     launch/plan.h       parameters, FLOPs and memory per rank of a config, and the
//                                activation checkpointing `auto` picks
//   bench    launch/bench.h      the benchmark suite (scenarios against ceilings measured in the
//                                same run); `bench gemm`, `bench ops`: the GEMM peak, the kernels
//   generate launch/generate.h   text sampled from a byte-level model (greedy or temperature/top-p)
// Library code throws switchyard::Error; only this file ends the process. With several MPI ranks a
// failing rank prints its error with its rank and aborts the whole job (no rank hangs).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/choices.h"
#include "core/error.h"
#include "launch/bench.h"
#include "launch/commands.h"
#include "launch/stop_signals.h"
#include "launch/data_report.h"
#include "launch/export.h"
#include "launch/generate.h"
#include "launch/plan.h"
#include "launch/train.h"
#include "parallel/mpi_context.h"

namespace sy = switchyard;

namespace {
// An option taking one of an enum's names (core/choices.h: its one names table).
template <sy::core::NamedEnum E>
CLI::Option* add_choice(CLI::App* app, const std::string& flag, E& value, const std::string& help) {
  std::vector<std::string> names;
  for (const auto& [v, name] : sy::core::EnumNames<E>::table) names.emplace_back(name);
  return app
      ->add_option_function<std::string>(
          flag, [&value](const std::string& s) { value = sy::core::value_named<E>(s).value(); }, help)
      ->check(CLI::IsMember(names));
}
}  // namespace

int main(int argc, char** argv) {
  sy::parallel::MpiContext mpi(&argc, &argv);
  sy::launch::take_stop_signals();  // before OpenMP and oneDNN start threads (launch/stop_signals.h)
  CLI::App app{"Switchyard: train Mixture-of-Experts language models", "switchyard"};
  app.require_subcommand(1);
  // One line per command-line error, like every other error of the command.
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    return fmt::format("switchyard: error: {} (run `{} --help` for usage)\n", e.what(), a->get_name());
  });
  app.set_version_flag("--version", "switchyard 0.1.0");

  sy::launch::TrainOptions train;
  auto* t = app.add_subcommand("train", "Train a model described by a YAML config");
  t->add_option("--config", train.config_path, "YAML experiment config (e.g. configs/tiny.yaml)")->required();
  t->add_option("--set", train.overrides, "Override a config key: --set train.steps=50 (repeatable)");
  t->add_option("--init-from", train.init_from, "Start from Hugging Face weights (config.json + safetensors)");
  t->add_option("--run-dir", train.run_dir, "Run folder (default: run.dir, else runs/<run.name>)");
  auto* resume = t->add_option("--resume", train.resume_from,
                               "Continue from a checkpoint: a step-NNNNNN folder or a checkpoint directory "
                               "(its `latest`); without a value, the latest under checkpoint.dir")
                     ->expected(0, 1);
  t->add_flag("--overwrite", train.overwrite,
              "Start afresh in a run folder that holds an earlier run: its config, metrics, checkpoints and "
              "weights are removed first (files Switchyard did not write are kept)");

  sy::launch::EvalOptions eval;
  auto* e = app.add_subcommand("eval", "Mean token loss over consecutive non-overlapping windows");
  e->add_option("--init-from", eval.init_from, "Hugging Face model folder");
  e->add_option("--checkpoint", eval.checkpoint, "Run folder written by `switchyard train`");
  e->add_option("--data", eval.data,
                "Token file (HDF5 from `switchyard prepare`, llm.c .bin, or Megatron PREFIX / PREFIX.bin)")
      ->required();
  e->add_option("--split", eval.split, "Split of an HDF5 token file: train or valid (default valid)")->check(CLI::IsMember({"train", "valid"}));
  e->add_option("--seq-len", eval.seq_len, "Window length N (windows of N+1 tokens; default: model max_seq_len)");
  e->add_option("--batch", eval.batch, "Windows per forward pass");
  e->add_option("--max-windows", eval.max_windows, "Evaluate at most this many windows (0: all)");
  add_choice(e, "--device", eval.device, "Where to compute: cpu (default) or cuda (the first GPU)");
  e->add_option("--threads", eval.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)");
  e->add_flag("--allow-nonfinite", eval.allow_nonfinite, "Evaluate weights that hold inf/NaN (refused by default)");
  e->add_option("--dump-logits", eval.dump_logits,
                "Also write the logits (fp32 little-endian [windows*seq_len, vocab]) to this file");

  sy::launch::GenerateOptions gen;
  auto* g = app.add_subcommand("generate", "Continue a prompt with text sampled from a byte-level model");
  g->add_option("--init-from", gen.init_from, "Hugging Face model folder");
  g->add_option("--checkpoint", gen.checkpoint,
                "Checkpoint folder (step-NNNNNN), checkpoint directory (its `latest`) or run folder");
  g->add_option("--prompt", gen.prompt, "Text to continue (its bytes are the tokens)")->required();
  g->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate at most (default 64; fewer at an end of document)");
  g->add_option("--temperature", gen.temperature, "Softmax temperature (default 1; 0: greedy)");
  g->add_option("--top-p", gen.top_p, "Sample among the most probable tokens holding this mass, in (0, 1] (default 1)");
  g->add_option("--seed", gen.seed, "Seed of the draws (default 0)");
  add_choice(g, "--device", gen.device, "Where to compute: cpu (default) or cuda (the first GPU)");
  g->add_option("--threads", gen.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)");
  g->add_flag("--allow-nonfinite", gen.allow_nonfinite, "Use weights that hold inf/NaN (refused by default)");

  sy::launch::ExportOptions exp;
  auto* x = app.add_subcommand("export", "Write a checkpoint in the Hugging Face layout (transformers, vLLM)");
  x->add_option("--checkpoint", exp.checkpoint,
                "Checkpoint folder (step-NNNNNN), checkpoint directory (its `latest`) or run folder")->required();
  x->add_option("--out", exp.out, "Output folder (must be new or empty unless --overwrite)")->required();
  x->add_flag("--allow-nonfinite", exp.allow_nonfinite, "Export weights that hold inf/NaN (refused by default)");
  x->add_flag("--overwrite", exp.overwrite,
              "Replace an earlier export at --out (only the files export wrote; others are kept)");
  add_choice(x, "--dtype", exp.dtype, "Weight dtype: bf16 (default), fp16 or fp32");
  x->add_option("--max-shard-size", exp.max_shard_size, "Largest safetensors shard, e.g. 5GB (default), 500MB");
  x->add_option("--format", exp.format, "hf (default: Hugging Face folder) or gguf (one llama.cpp file --out)")
      ->check(CLI::IsMember({"hf", "gguf"}));
  x->add_option("--quantize", exp.quantize,
                "int8: per-channel weight-only int8 linear weights (I8 + F32 scales); needs --eval-data")
      ->check(CLI::IsMember({"int8"}));
  x->add_option("--eval-data", exp.eval_data, "Token file for the --quantize eval-loss report (before / after)");
  x->add_option("--eval-windows", exp.eval_windows, "Windows evaluated for the --quantize report (default 16)");
  x->add_option("--eval-seq-len", exp.eval_seq_len, "Window length for the report (default: model max_seq_len)");

  sy::launch::PrepareCommandOptions prep;
  auto* p = app.add_subcommand("prepare", "Turn text files into a byte-level token file (HDF5 or Megatron .bin/.idx)");
  p->add_option("--input", prep.inputs, "Files or folders (walked recursively)")->required()->expected(1, -1);
  p->add_option("--output", prep.output,
                "Output HDF5 file, or with --format megatron the PREFIX of PREFIX.bin + PREFIX.idx (a .bin/.idx "
                "ending is dropped); must not exist unless --overwrite")->required();
  p->add_option("--format", prep.format,
                "hdf5 (default: one file, splits train and valid) or megatron (Megatron-LM / GPT-NeoX indexed "
                "dataset, uint16 tokens, one sequence per document; no splits: the validation documents go to "
                "PREFIX_valid.bin + PREFIX_valid.idx)")
      ->check(CLI::IsMember({"hdf5", "megatron"}));
  p->add_flag("--overwrite", prep.overwrite,
              "Replace existing output written by prepare (a readable token file of that format; nothing else)");
  p->add_option("--valid-fraction", prep.valid_fraction,
                "Fraction of documents for the validation split (megatron: > 0 writes PREFIX_valid and needs "
                "two documents or more; 0: none)");

  sy::launch::DataReportOptions report;
  auto* dr = app.add_subcommand("data-report", "What a document-mode run learned about its samples: the ones "
                                               "scored most noisy and most hard, with a text preview");
  dr->add_option("--checkpoint", report.checkpoint,
                 "Checkpoint folder (step-NNNNNN), checkpoint directory (its `latest`) or run folder")->required();
  dr->add_option("--top", report.top, "Samples listed per kind (default 10)");
  dr->add_option("--json", report.json, "Also write every sample's statistics and scores to this JSON file");

  sy::launch::PlanOptions plan;
  auto* pl = app.add_subcommand("plan", "Parameters, FLOPs per token and memory per rank of a config, per "
                                        "activation-checkpointing policy");
  pl->add_option("--config", plan.config_path, "YAML experiment config")->required();
  pl->add_option("--set", plan.overrides, "Override a config key (repeatable), as for train");
  pl->add_option("--ranks", plan.ranks, "World size (default: parallel.expert_parallel)");

  int bench_threads = 0, bench_repeats = 5;
  sy::launch::BenchSuiteOptions suite;
  auto* b = app.add_subcommand("bench", "The benchmark suite: named scenarios (GEMM peak, attention, MoE layer, "
                                        "token exchange, all-reduce, AdamW, data, a training step of each config, "
                                        "eval, checkpoint, export), each against a ceiling measured in the same run; "
                                        "or one of the micro-benchmarks below");
  add_choice(b, "--device", suite.device, "cpu (default) or cuda (the first GPU)");
  b->add_option("--threads", suite.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)");
  b->add_flag("--quick", suite.quick, "Small sizes: the whole suite in well under a minute");
  b->add_option("--only", suite.only, "Scenarios to run: names or families (the part before a `_`), comma-separated "
                                      "(--list shows them)")->delimiter(',');
  b->add_option("--json", suite.json, "Also write the rows to this JSON file (scripts/bench_all.sh reads it)");
  b->add_option("--configs", suite.configs, "Folder of the YAML configs the train_* scenarios run (default configs)");
  b->add_option("--dir", suite.dir, "Where checkpoint and export scenarios write (default: a temporary folder)");
  b->add_flag("--list", suite.list, "Print the scenario names and what each measures, run nothing");
  auto* bg = b->add_subcommand("gemm", "Measured fp32 GEMM rate (the peak a training step is compared to)");
  bg->add_option("--threads", bench_threads, "CPU threads (default: OMP_NUM_THREADS or all cores)");
  bg->add_option("--repeats", bench_repeats, "Timed repetitions per shape (best is kept)");
  sy::launch::BenchOpsOptions ops;
  auto* bo = b->add_subcommand("ops", "The training step's heavy kernels on a backend (GEMMs, grouped expert "
                                      "GEMMs, attention, AdamW), each against its ceiling");
  add_choice(bo, "--device", ops.device, "cpu (default) or cuda (the first GPU)");
  bo->add_option("--threads", ops.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)");
  bo->add_flag("--quick", ops.quick, "Small sizes: a smoke run");
  bo->add_option("--json", ops.json, "Also write the rows to this JSON file");
  b->require_subcommand(0, 1);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    const int code = app.exit(err);  // prints help or the error
    return code == 0 ? 0 : 2;
  }

  try {
    train.resume = resume->count() > 0;
    if (*t) return sy::launch::run_train(train, mpi);
    if (*e) return sy::launch::run_eval(eval);
    if (*p) return sy::launch::run_prepare(prep);
    if (*g) return sy::launch::run_generate(gen);
    if (*x) return sy::launch::run_export(exp);
    if (*pl) return sy::launch::run_plan(plan);
    if (*dr) return sy::launch::run_data_report(report);
    if (*bg) return sy::launch::run_bench_gemm(bench_threads, bench_repeats);
    if (*bo) return sy::launch::run_bench_ops(ops);
    if (*b) return sy::launch::run_bench_suite(suite, mpi);
  } catch (const sy::Error& err) {
    if (mpi.size() > 1) fmt::print(stderr, "switchyard: error on rank {}: {}\n", mpi.rank(), err.what());
    else fmt::print(stderr, "switchyard: error: {}\n", err.what());
    mpi.abort_job(err.exit_code());
  } catch (const std::exception& err) {
    fmt::print(stderr, "switchyard: internal error{}: {}\n",
               mpi.size() > 1 ? fmt::format(" on rank {}", mpi.rank()) : "", err.what());
    mpi.abort_job(1);
  }
  return 0;
}
