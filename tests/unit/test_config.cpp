// tests/unit/test_config.cpp: YAML configs -> typed structs: configs/tiny.yaml, defaults, every
// error class (unknown key, wrong type, syntax, missing file, bad override, validation) naming the
// origin and the full key path, overrides, and the to_yaml -> parse round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <iterator>
#include <set>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include "core/config.h"
#include "core/error.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::ExperimentConfig;
using core::parse_experiment_config;

const std::string kOrigin = "configs/x.yaml";

const char* kTinyLike = R"(
run:
  name: tiny
model:
  vocab_size: 256
  d_model: 256
  n_layers: 4
  n_heads: 8
  n_kv_heads: 4
  max_seq_len: 256
  rope_theta: 10000
  moe:
    n_experts: 8
    top_k: 2
    expert_size: 512
    normalize_topk: true
    aux_loss_coef: 0.01
    z_loss_coef: 0.001
train:
  steps: 300
  micro_batch: 8
  seq_len: 256
  grad_accum: 1
  precision: fp32
  eval_interval: 100
  eval_windows: 32
optim:
  lr: 2e-3
  min_lr: 2e-4
  warmup_steps: 30
  weight_decay: 0.1
  beta1: 0.9
  beta2: 0.95
  grad_clip: 1.0
data:
  train: data-cache/corpus.h5
parallel:
  expert_parallel: 1
)";

// The usage Error's message for parsing `text` (with overrides); fails the test if none is thrown.
std::string usage_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_experiment_config(text, kOrigin, overrides);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  ADD_FAILURE() << "no error for:\n" << text;
  return {};
}

std::string validate_error(const ExperimentConfig& cfg) {
  try {
    core::validate(cfg, kOrigin);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "validate() accepted the config";
  return {};
}


void expect_equal(const ExperimentConfig& a, const ExperimentConfig& b) {
  // Compare through the writer: every field is written, doubles in round-trip precision.
  EXPECT_EQ(core::to_yaml(a), core::to_yaml(b));
  EXPECT_EQ(a.model.moe.top_k, b.model.moe.top_k);
  EXPECT_EQ(a.optim.lr, b.optim.lr);
  EXPECT_EQ(a.data.train, b.data.train);
}

TEST(Config, ParsesTinyLikeText) {
  ExperimentConfig c = parse_experiment_config(kTinyLike, kOrigin);
  EXPECT_EQ(c.run.name, "tiny");
  EXPECT_EQ(c.run.dir, "");
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.model.n_kv_heads, 4);
  EXPECT_EQ(c.model.rope_theta, 10000.0);
  EXPECT_EQ(c.model.moe.n_experts, 8);
  EXPECT_EQ(c.model.moe.expert_size, 512);
  EXPECT_TRUE(c.model.moe.normalize_topk);
  EXPECT_DOUBLE_EQ(c.model.moe.z_loss_coef, 0.001);
  EXPECT_EQ(c.train.steps, 300);
  EXPECT_EQ(c.train.precision, core::Dtype::f32);
  EXPECT_EQ(c.train.eval_windows, 32);
  EXPECT_DOUBLE_EQ(c.optim.lr, 2e-3);
  EXPECT_DOUBLE_EQ(c.optim.min_lr, 2e-4);
  EXPECT_EQ(c.optim.warmup_steps, 30);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.95);
  EXPECT_EQ(c.data.train, "data-cache/corpus.h5");
  // absent keys keep their defaults
  EXPECT_EQ(c.model.head_dim, 0);
  EXPECT_DOUBLE_EQ(c.model.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.train.seed, 1234);
  EXPECT_DOUBLE_EQ(c.optim.eps, 1e-8);
  EXPECT_TRUE(c.optim.decay_embeddings);
}

TEST(Config, RepositoryTinyYaml) {
  const std::string path = std::string(SWITCHYARD_SOURCE_DIR) + "/configs/tiny.yaml";
  ExperimentConfig c = core::load_experiment_config(path);
  // The values the tiny demo is specified with (other keys may be tuned in the file).
  EXPECT_EQ(c.run.name, "tiny");
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.model.n_kv_heads, 4);
  EXPECT_DOUBLE_EQ(c.model.rope_theta, 10000.0);
  EXPECT_EQ(c.model.moe.n_experts, 8);
  EXPECT_EQ(c.model.moe.top_k, 2);
  EXPECT_EQ(c.model.moe.expert_size, 512);
  EXPECT_TRUE(c.model.moe.normalize_topk);
  EXPECT_DOUBLE_EQ(c.model.moe.aux_loss_coef, 0.01);
  EXPECT_DOUBLE_EQ(c.model.moe.z_loss_coef, 0.001);
  EXPECT_EQ(c.train.steps, 300);
  EXPECT_EQ(c.train.grad_accum, 1);
  EXPECT_EQ(c.train.precision, core::Dtype::f32);
  EXPECT_EQ(c.train.eval_windows, 32);
  EXPECT_DOUBLE_EQ(c.optim.lr, 2e-3);
  EXPECT_DOUBLE_EQ(c.optim.min_lr, 2e-4);
  EXPECT_EQ(c.optim.warmup_steps, 30);
  EXPECT_DOUBLE_EQ(c.optim.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.95);
  EXPECT_EQ(c.data.train, "data-cache/corpus.h5");
  EXPECT_EQ(c.model.d_model, 256);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.n_heads, 8);
  EXPECT_EQ(c.model.max_seq_len, 256);
  EXPECT_EQ(c.train.micro_batch, 8);
  EXPECT_EQ(c.train.seq_len, 256);
  EXPECT_EQ(c.train.eval_interval, 100);
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.optim.grad_clip, 1.0);
  EXPECT_EQ(c.parallel.expert_parallel, 1);
}

// configs/tiny.yaml is the reference a user copies from: it lists every key of the schema. The
// schema's keys are read from the resolved YAML of a default config (to_yaml writes every key).
TEST(Config, TinyYamlListsEveryKeyOfTheSchema) {
  std::function<void(const YAML::Node&, const std::string&, std::set<std::string>&)> leaves =
      [&](const YAML::Node& n, const std::string& prefix, std::set<std::string>& out) {
        for (const auto& kv : n) {
          const std::string path = prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>();
          if (kv.second.IsMap()) leaves(kv.second, path, out);
          else out.insert(path);
        }
      };
  std::set<std::string> schema, tiny;
  leaves(YAML::Load(core::to_yaml(ExperimentConfig{})), "", schema);
  leaves(YAML::LoadFile(std::string(SWITCHYARD_SOURCE_DIR) + "/configs/tiny.yaml"), "", tiny);
  ASSERT_GT(schema.size(), 60u);
  std::vector<std::string> missing;
  std::set_difference(schema.begin(), schema.end(), tiny.begin(), tiny.end(), std::back_inserter(missing));
  EXPECT_TRUE(missing.empty()) << "configs/tiny.yaml does not list: " << fmt::format("{}", fmt::join(missing, ", "));
  EXPECT_EQ(schema, tiny);  // and nothing else (unknown keys would be a load error anyway)
}

TEST(Config, EmptyTextGivesDefaults) {
  ExperimentConfig c = parse_experiment_config("", kOrigin);
  EXPECT_EQ(core::to_yaml(c), core::to_yaml(ExperimentConfig{}));
  ExperimentConfig d = parse_experiment_config("model:\ntrain:\n", kOrigin);
  EXPECT_EQ(core::to_yaml(d), core::to_yaml(ExperimentConfig{}));
}

TEST(Config, UnknownKeyNamesFileAndFullPath) {
  std::string m = usage_error("model:\n  moe:\n    topk: 2\n");
  EXPECT_HAS(m, "configs/x.yaml: unknown key 'model.moe.topk'");
  EXPECT_HAS(m, "known keys under model.moe: n_experts, top_k, expert_size");
  EXPECT_HAS(m, "line 3");

  m = usage_error("trian:\n  steps: 3\n");
  EXPECT_HAS(m, "configs/x.yaml: unknown key 'trian'");
  EXPECT_HAS(m, "known top-level keys: run, model, train, optim, data, parallel");

  m = usage_error("optim:\n  learning_rate: 0.1\n");
  EXPECT_HAS(m, "unknown key 'optim.learning_rate'");
}

TEST(Config, DuplicateKey) {
  std::string m = usage_error("train:\n  steps: 3\n  steps: 4\n");
  EXPECT_HAS(m, "configs/x.yaml: duplicate key 'train.steps'");
}

TEST(Config, WrongTypes) {
  struct Case {
    std::string text, path, value, expected;
  };
  const std::vector<Case> cases = {
      {"model:\n  n_layers: four\n", "model.n_layers", "'four'", "an integer"},
      {"model:\n  n_layers: 1.5\n", "model.n_layers", "'1.5'", "an integer"},
      {"train:\n  steps: 1e3\n", "train.steps", "'1e3'", "an integer"},
      {"train:\n  steps: \"100\"\n", "train.steps", "'100'", "an integer"},
      {"train:\n  steps: [1, 2]\n", "train.steps", "a sequence", "an integer"},
      {"train:\n  steps:\n", "train.steps", "null", "an integer"},
      {"train:\n  steps: 99999999999999999999\n", "train.steps", "'99999999999999999999'", "an integer"},
      {"optim:\n  lr: fast\n", "optim.lr", "'fast'", "a number"},
      {"optim:\n  lr: .inf\n", "optim.lr", "'.inf'", "a number"},
      {"model:\n  moe:\n    normalize_topk: 1\n", "model.moe.normalize_topk", "'1'", "a boolean"},
      {"model:\n  moe:\n    normalize_topk: maybe\n", "model.moe.normalize_topk", "'maybe'", "a boolean"},
      {"run:\n  name: {a: 1}\n", "run.name", "a mapping", "a string"},
      {"model:\n  moe: 3\n", "model.moe", "'3'", "a mapping"},
      {"model: [1, 2]\n", "model", "a sequence", "a mapping"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string m = usage_error(c.text);
    EXPECT_HAS(m, "configs/x.yaml: " + c.path + ": expected " + c.expected);
    EXPECT_HAS(m, c.value);
  }
}

TEST(Config, RouterScoringAndSelectionBias) {
  ExperimentConfig c = parse_experiment_config(
      "model:\n  moe:\n    router:\n      scoring: sigmoid\n    balance:\n      bias_rate: 0.001\n", "x");
  EXPECT_EQ(c.model.moe.router.scoring, core::RouterScoring::sigmoid);
  EXPECT_DOUBLE_EQ(c.model.moe.balance.bias_rate, 1e-3);
  EXPECT_EQ(parse_experiment_config("", "x").model.moe.router.scoring, core::RouterScoring::softmax);
  EXPECT_EQ(parse_experiment_config("", "x").model.moe.balance.bias_rate, 0.0);
  std::string m = usage_error("model:\n  moe:\n    router:\n      scoring: relu\n");
  EXPECT_HAS(m, "model.moe.router.scoring: 'relu' is not one of softmax, sigmoid");
  m = usage_error("model:\n  moe:\n    balance:\n      bias_rate: -0.1\n");
  EXPECT_HAS(m, "model.moe.balance.bias_rate: must be >= 0");
  m = usage_error("", {"model.moe.router.scoring=tanh"});
  EXPECT_HAS(m, "model.moe.router.scoring");
}

TEST(Config, RouterTopPAndKMax) {
  const ExperimentConfig d = parse_experiment_config("", "x");
  EXPECT_EQ(d.model.moe.router.top_p, 0.0);
  EXPECT_EQ(d.model.moe.router.k_max, 0);
  EXPECT_EQ(d.model.moe.slots_per_token(), d.model.moe.top_k);
  ExperimentConfig c = parse_experiment_config(
      "model:\n  moe:\n    n_experts: 8\n    top_k: 2\n    router:\n      top_p: 0.7\n      k_max: 4\n", "x");
  EXPECT_DOUBLE_EQ(c.model.moe.router.top_p, 0.7);
  EXPECT_EQ(c.model.moe.router.k_max, 4);
  EXPECT_EQ(c.model.moe.top_k, 2);  // the config value stays; the routing has k_max slots
  EXPECT_EQ(c.model.moe.slots_per_token(), 4);
  c = parse_experiment_config("", "x", {"model.moe.router.top_p=1", "model.moe.router.k_max=8"});
  EXPECT_EQ(c.model.moe.slots_per_token(), 8);
  // k_max is not read while top_p is 0
  EXPECT_EQ(parse_experiment_config("", "x", {"model.moe.router.k_max=99"}).model.moe.slots_per_token(), 2);

  std::string m = usage_error("model:\n  moe:\n    router:\n      top_p: 1.5\n      k_max: 2\n");
  EXPECT_HAS(m, "model.moe.router.top_p: must be in [0, 1]");
  EXPECT_HAS(m, "1.5");
  m = usage_error("", {"model.moe.router.top_p=-0.1", "model.moe.router.k_max=2"});
  EXPECT_HAS(m, "model.moe.router.top_p: must be in [0, 1]");
  m = usage_error("", {"model.moe.router.top_p=0.5"});  // k_max 0
  EXPECT_HAS(m, "model.moe.router.k_max: must be in [1, model.moe.n_experts = 8]");
  m = usage_error("", {"model.moe.router.top_p=0.5", "model.moe.router.k_max=9"});
  EXPECT_HAS(m, "model.moe.router.k_max: must be in [1, model.moe.n_experts = 8]");
  EXPECT_HAS(m, "got 9");
  m = usage_error("", {"model.moe.router.top_p=half"});
  EXPECT_HAS(m, "model.moe.router.top_p");
}

TEST(Config, AuxScope) {
  EXPECT_EQ(parse_experiment_config("", "x").model.moe.balance.aux_scope, core::AuxScope::micro_batch);
  ExperimentConfig c = parse_experiment_config("model:\n  moe:\n    balance:\n      aux_scope: global\n", "x");
  EXPECT_EQ(c.model.moe.balance.aux_scope, core::AuxScope::global);
  c = parse_experiment_config("", "x", {"model.moe.balance.aux_scope=micro_batch"});
  EXPECT_EQ(c.model.moe.balance.aux_scope, core::AuxScope::micro_batch);
  std::string m = usage_error("model:\n  moe:\n    balance:\n      aux_scope: step\n");
  EXPECT_HAS(m, "model.moe.balance.aux_scope: 'step' is not one of micro_batch, global");
  m = usage_error("", {"model.moe.balance.aux_scope=world"});
  EXPECT_HAS(m, "model.moe.balance.aux_scope");
}

TEST(Config, AcceptedScalarForms) {
  ExperimentConfig c = parse_experiment_config(
      "model:\n  moe:\n    normalize_topk: False\n  rope_theta: 1e6\n  vocab_size: 0x100\n"
      "train:\n  seed: +7\n  steps: 12\noptim:\n  lr: 1\n  min_lr: 0\nrun:\n  name: 123\n"
      "data:\n  valid: ~\n",
      kOrigin);
  EXPECT_FALSE(c.model.moe.normalize_topk);
  EXPECT_DOUBLE_EQ(c.model.rope_theta, 1e6);
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.train.seed, 7);
  EXPECT_DOUBLE_EQ(c.optim.lr, 1.0);
  EXPECT_EQ(c.run.name, "123");
  EXPECT_EQ(c.data.valid, "");
}

TEST(Config, SyntaxErrorNamesFileAndLine) {
  std::string m = usage_error("model:\n  d_model: 256\n  moe: [1, 2\ntrain:\n  steps: 1\n");
  EXPECT_HAS(m, "configs/x.yaml: YAML syntax error at line");
  m = usage_error("model:\n  d_model: 256\n   n_layers: 4\n");
  EXPECT_HAS(m, "configs/x.yaml: YAML syntax error at line 3");
}

TEST(Config, TopLevelNotAMapping) {
  std::string m = usage_error("- a\n- b\n");
  EXPECT_HAS(m, "configs/x.yaml: expected a mapping of sections");
}

TEST(Config, MissingFile) {
  try {
    core::load_experiment_config("configs/does-not-exist.yaml");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    std::string m = e.what();
    EXPECT_HAS(m, "configs/does-not-exist.yaml: config file not found");
    EXPECT_HAS(m, "configs/tiny.yaml");  // the hint
  }
}

TEST(Config, LoadsFileWithOverridesAndReportsFileInErrors) {
  auto dir = test::temp_dir("Config_LoadsFile");
  const std::string path = (dir / "c.yaml").string();
  {
    std::ofstream f(path);
    f << kTinyLike;
  }
  ExperimentConfig c = core::load_experiment_config(path, {"train.steps=5"});
  EXPECT_EQ(c.train.steps, 5);
  {
    std::ofstream f(path);
    f << "model:\n  n_layers: x\n";
  }
  try {
    core::load_experiment_config(path);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), path + ": model.n_layers: expected an integer, got 'x' (line 2)");
  }
}

TEST(Config, Overrides) {
  ExperimentConfig c = parse_experiment_config(
      kTinyLike, kOrigin,
      {"model.moe.top_k=4", "optim.lr=3e-4", "run.name=other", "model.moe.normalize_topk=false",
       "train.steps = 7", "data.valid=path/with=equals.h5", "run.dir="});
  EXPECT_EQ(c.model.moe.top_k, 4);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.run.name, "other");
  EXPECT_FALSE(c.model.moe.normalize_topk);
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_EQ(c.data.valid, "path/with=equals.h5");
  EXPECT_EQ(c.run.dir, "");
  // later overrides win
  c = parse_experiment_config(kTinyLike, kOrigin, {"train.steps=3", "train.steps=9"});
  EXPECT_EQ(c.train.steps, 9);
}

TEST(Config, OverridesAreAppliedBeforeValidation) {
  // top_k 9 > n_experts 8 is invalid, but the override raising n_experts makes it valid.
  ExperimentConfig c = parse_experiment_config(kTinyLike, kOrigin,
                                               {"model.moe.top_k=9", "model.moe.n_experts=16"});
  EXPECT_EQ(c.model.moe.top_k, 9);
  // and an override can make a valid file invalid
  std::string m = usage_error(kTinyLike, {"model.moe.top_k=9"});
  EXPECT_HAS(m, "configs/x.yaml: model.moe.top_k: must be in [1, model.moe.n_experts = 8], got 9");
}

TEST(Config, BadOverrides) {
  std::string m = usage_error(kTinyLike, {"model.moe.topk=3"});
  EXPECT_HAS(m, "override 'model.moe.topk=3': unknown key 'model.moe.topk'");
  EXPECT_HAS(m, "known keys under model.moe: n_experts, top_k");

  m = usage_error(kTinyLike, {"modle.n_layers=3"});
  EXPECT_HAS(m, "override 'modle.n_layers=3': unknown key 'modle'");

  m = usage_error(kTinyLike, {"train.steps"});
  EXPECT_HAS(m, "override 'train.steps': expected KEY=VALUE");

  m = usage_error(kTinyLike, {"train.steps=ten"});
  EXPECT_HAS(m, "override 'train.steps=ten': train.steps: expected an integer, got 'ten'");

  m = usage_error(kTinyLike, {"model.moe=3"});
  EXPECT_HAS(m, "override 'model.moe=3': 'model.moe' is a section, not a value");

  m = usage_error(kTinyLike, {"train.steps.x=3"});
  EXPECT_HAS(m, "override 'train.steps.x=3': unknown key 'train.steps.x'");

  m = usage_error(kTinyLike, {"=3"});
  EXPECT_HAS(m, "override '=3': malformed key");

  m = usage_error(kTinyLike, {"train..steps=3"});
  EXPECT_HAS(m, "override 'train..steps=3': malformed key");

  m = usage_error(kTinyLike, {"train.steps=[1"});
  EXPECT_HAS(m, "override 'train.steps=[1'");
}

TEST(Config, RoundTrip) {
  ExperimentConfig c = parse_experiment_config(kTinyLike, kOrigin);
  // non-default values of every type, including awkward strings and doubles
  c.run.name = "name: with \"quotes\" and \\ # hash";
  c.run.dir = "true";
  c.data.train = "123";
  c.data.valid = "line\nbreak\ttab";
  c.model.rope_theta = 1e6;
  c.model.rms_norm_eps = 1e-6;
  c.model.init_std = 0.1 + 0.2;  // not exactly representable in few digits
  c.model.qkv_bias = true;
  c.model.moe.shared_expert_size = 64;
  c.optim.eps = 1e-12;
  c.optim.lr = 1.0;
  c.optim.decay_router = true;
  c.train.seed = -5;  // invalid, but to_yaml/parse round trip must not care: validated below
  const std::string y = core::to_yaml(c);
  c.train.seed = 5;
  const std::string y2 = core::to_yaml(c);
  ExperimentConfig back = parse_experiment_config(y2, "resolved.yaml");
  expect_equal(back, c);
  EXPECT_EQ(back.run.name, c.run.name);
  EXPECT_EQ(back.run.dir, "true");
  EXPECT_EQ(back.data.train, "123");
  EXPECT_EQ(back.data.valid, c.data.valid);
  EXPECT_EQ(back.model.init_std, c.model.init_std);
  EXPECT_EQ(back.optim.eps, 1e-12);
  EXPECT_EQ(back.model.moe.shared_expert_size, 64);
  EXPECT_TRUE(back.model.qkv_bias);
  // every key written, nested
  EXPECT_HAS(y, "model:\n");
  EXPECT_HAS(y, "  moe:\n    n_experts: 8\n");
  EXPECT_HAS(y, "  seed: -5\n");
  EXPECT_HAS(y, "parallel:\n  expert_parallel: 1\n");
  EXPECT_HAS(y, "  decay_embeddings: true\n");
  EXPECT_HAS(y, "  lr: 1.0\n");
  EXPECT_HAS(y, "  eps: 1.0e-12\n");  // a float for YAML 1.1 readers too
  // defaults round-trip as well
  ExperimentConfig d;
  expect_equal(parse_experiment_config(core::to_yaml(d), "defaults"), d);
}

TEST(Config, ValidationFailures) {
  const ExperimentConfig good = parse_experiment_config(kTinyLike, kOrigin);
  EXPECT_NO_THROW(core::validate(good, kOrigin));
  struct Case {
    std::function<void(ExperimentConfig&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.model.d_model = 0; }, "model.d_model: must be positive"},
      {[](auto& c) { c.model.vocab_size = -1; }, "model.vocab_size: must be positive"},
      {[](auto& c) { c.model.n_layers = 0; }, "model.n_layers: must be positive"},
      {[](auto& c) { c.model.n_kv_heads = 3; }, "model.n_heads: 8 is not a multiple of model.n_kv_heads = 3"},
      {[](auto& c) { c.model.d_model = 260; }, "model.d_model: 260 is not a multiple of model.n_heads = 8"},
      {[](auto& c) { c.model.head_dim = 33; }, "model.head_dim: the head size 33 must be even"},
      {[](auto& c) { c.model.d_model = 8 * 3; c.model.n_kv_heads = 8; }, "model.d_model: the head size 3 must be even"},
      {[](auto& c) { c.model.moe.top_k = 0; }, "model.moe.top_k: must be in [1, model.moe.n_experts = 8], got 0"},
      {[](auto& c) { c.model.moe.top_k = 9; }, "model.moe.top_k: must be in [1, model.moe.n_experts = 8], got 9"},
      {[](auto& c) { c.model.moe.n_experts = 0; }, "model.moe.n_experts: must be positive"},
      {[](auto& c) { c.model.moe.expert_size = 0; }, "model.moe.expert_size: must be positive"},
      {[](auto& c) { c.model.moe.shared_expert_size = -1; }, "model.moe.shared_expert_size: must be >= 0"},
      {[](auto& c) { c.model.first_dense_layers = 5; }, "model.first_dense_layers: must be in [0, model.n_layers = 4], got 5"},
      {[](auto& c) { c.model.first_dense_layers = 1; c.model.dense_ffn_size = 0; }, "model.dense_ffn_size: must be positive"},
      {[](auto& c) { c.train.seq_len = 512; }, "train.seq_len: 512 is longer than model.max_seq_len = 256"},
      {[](auto& c) { c.train.loss_scaler.backoff_factor = 1; }, "train.loss_scaler.backoff_factor: must be in (0, 1), got 1"},
      {[](auto& c) { c.train.loss_scaler.min_scale = 1e6; }, "train.loss_scaler.min_scale: 1000000 is larger than train.loss_scaler.initial_scale = 65536"},
      {[](auto& c) { c.train.loss_scaler.hysteresis = 0; }, "train.loss_scaler.hysteresis: must be positive"},
      {[](auto& c) { c.train.activation_memory_mb = -1; }, "train.activation_memory_mb: must be >= 0"},
      {[](auto& c) { c.train.steps = 0; }, "train.steps: must be positive"},
      {[](auto& c) { c.train.grad_accum = 0; }, "train.grad_accum: must be positive"},
      {[](auto& c) { c.train.micro_batch = 0; }, "train.micro_batch: must be positive"},
      {[](auto& c) { c.optim.lr = 0; }, "optim.lr: must be positive"},
      {[](auto& c) { c.optim.min_lr = 1; }, "optim.min_lr: 1 is larger than optim.lr = 0.002"},
      {[](auto& c) { c.optim.warmup_steps = -1; }, "optim.warmup_steps: must be >= 0"},
      {[](auto& c) { c.optim.beta1 = 1.0; }, "optim.beta1: must be in [0, 1), got 1"},
      {[](auto& c) { c.optim.beta2 = -0.1; }, "optim.beta2: must be in [0, 1), got -0.1"},
      {[](auto& c) { c.parallel.expert_parallel = 0; }, "parallel.expert_parallel: must be positive"},
      {[](auto& c) { c.parallel.expert_parallel = 3; }, "parallel.expert_parallel: 3 does not divide model.moe.n_experts = 8"},
      {[](auto& c) { c.run.name = ""; }, "run.name: must not be empty"},
  };
  for (const Case& k : cases) {
    ExperimentConfig c = good;
    k.edit(c);
    const std::string m = validate_error(c);
    EXPECT_HAS(m, "configs/x.yaml: " + k.expect);
  }
  // valid edge cases
  ExperimentConfig c = good;
  c.model.head_dim = 64;  // explicit head size: d_model need not be n_heads * head_dim
  c.model.d_model = 100;
  c.model.moe.top_k = 8;
  c.model.first_dense_layers = 4;
  c.optim.min_lr = c.optim.lr;
  c.optim.warmup_steps = 0;
  c.parallel.expert_parallel = 8;
  c.train.seq_len = 256;
  EXPECT_NO_THROW(core::validate(c, kOrigin));
}

TEST(Config, ValidationRunsOnParse) {
  std::string m = usage_error("train:\n  precision: int4\n");
  EXPECT_HAS(m, "configs/x.yaml: train.precision: 'int4' is not one of fp32, bf16, fp16");
  // the enumerated choices are typed at load (core/choices.h): a name outside the table never
  // reaches validate()
  m = usage_error("train:\n  precision: fp8\n");
  EXPECT_HAS(m, "configs/x.yaml: train.precision: 'fp8' is not one of fp32, bf16, fp16");
  m = usage_error("train:\n  activation_checkpointing: some\n");
  EXPECT_HAS(m, "configs/x.yaml: train.activation_checkpointing: 'some' is not one of none, full, selective, auto");
  m = usage_error(kTinyLike, {"parallel.token_exchange=ring"});
  EXPECT_HAS(m, "parallel.token_exchange: 'ring' is not one of flat, hierarchical, auto");
  m = usage_error("train:\n  precision: [bf16]\n");
  EXPECT_HAS(m, "configs/x.yaml: train.precision: expected one of fp32, bf16, fp16, got a sequence");
  m = usage_error(kTinyLike, {"parallel.expert_parallel=3"});
  EXPECT_HAS(m, "configs/x.yaml: parallel.expert_parallel: 3 does not divide");
}

}  // namespace
}  // namespace switchyard
