// core/config.cpp: YAML <-> the typed config structs, driven by their visit() tables, plus the
// --set overrides and the consistency checks. Every error is a usage Error naming the origin (file
// or override) and the full key path.
#include "core/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <vector>
#include <system_error>
#include <thread>
#include <type_traits>

#include "core/error.h"

namespace switchyard::core {
namespace {

// ---- schema introspection ----

struct KeyLister {
  std::vector<std::string> keys;
  template <class T> void operator()(const char* key, T&) { keys.emplace_back(key); }
};

template <class T>
concept Section = requires(T& t, KeyLister& v) { t.visit(v); };

template <Section T> std::vector<std::string> keys_of(T& section) {
  KeyLister l;
  section.visit(l);
  return l.keys;
}

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string known_keys_note(const std::string& section_path, const std::vector<std::string>& keys) {
  if (section_path.empty()) return fmt::format("known top-level keys: {}", fmt::join(keys, ", "));
  return fmt::format("known keys under {}: {}", section_path, fmt::join(keys, ", "));
}

template <class T> constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, double>) return "a number";
  else if constexpr (std::is_same_v<T, bool>) return "a boolean (true or false)";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else static_assert(sizeof(T) == 0, "config field of an unsupported type");
}

// ---- where a value came from, for messages ----

// "configs/x.yaml" (+ " (line N)" for file values) or "override 'a.b=c'".
struct Origin {
  std::string name;      // the file (or text origin)
  std::string override_; // non-empty when the value comes from an override
  int line = -1;         // 1-based line of the key in the file, -1: unknown
  std::string prefix() const {
    return override_.empty() ? name : fmt::format("override '{}'", override_);
  }
};

std::string line_note(int line) { return line > 0 ? fmt::format(" (line {})", line) : std::string(); }
int line_of(const YAML::Node& n) { return n.Mark().line >= 0 ? n.Mark().line + 1 : -1; }
std::string line_note(const YAML::Node& n) { return line_note(line_of(n)); }

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar:
      return n.Tag() == "!" ? fmt::format("the quoted string '{}'", n.Scalar())
                            : fmt::format("'{}'", n.Scalar());
    default: return "an undefined value";
  }
}

[[noreturn]] void type_error(const Origin& o, const std::string& path, const YAML::Node& n,
                             const char* expected, const std::string& extra = {}) {
  throw_usage("{}: {}: expected {}, got {}{}{}", o.prefix(), path, expected, describe(n), extra,
              o.override_.empty() ? line_note(o.line > 0 ? o.line : line_of(n)) : std::string());
}

bool plain_scalar(const YAML::Node& n) { return n.IsScalar() && n.Tag() != "!"; }

// ---- reading one value ----

void read_value(const YAML::Node& n, int64_t& out, const Origin& o, const std::string& path) {
  if (!plain_scalar(n)) type_error(o, path, n, type_name<int64_t>());
  std::string s = n.Scalar();
  bool neg = false;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  int base = 10;
  if (s.size() - i > 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) base = 16, i += 2;
  else if (s.size() - i > 2 && s[i] == '0' && s[i + 1] == 'o') base = 8, i += 2;
  uint64_t u = 0;
  const char* b = s.data() + i;
  const char* e = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(b, e, u, base);
  if (b == e || ptr != e || (ec != std::errc() && ec != std::errc::result_out_of_range)) {
    double d = 0;
    const char* db = s.data() + (s.empty() || s[0] != '+' ? 0 : 1);
    auto [dp, dec] = std::from_chars(db, e, d, std::chars_format::general);
    const bool number = dp == e && dec == std::errc() && db != e;
    type_error(o, path, n, type_name<int64_t>(),
               number ? " (integers are written without a decimal point or exponent)" : "");
  }
  const uint64_t lim = neg ? uint64_t(1) << 63 : (uint64_t(1) << 63) - 1;
  if (ec == std::errc::result_out_of_range || u > lim)
    type_error(o, path, n, "an integer", " (out of the 64-bit range)");
  out = neg ? static_cast<int64_t>(0 - u) : static_cast<int64_t>(u);
}

void read_value(const YAML::Node& n, double& out, const Origin& o, const std::string& path) {
  if (!plain_scalar(n)) type_error(o, path, n, type_name<double>());
  const std::string& s = n.Scalar();
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  double v = 0;
  auto [ptr, ec] = std::from_chars(b, e, v, std::chars_format::general);
  if (b == e || ptr != e || ec != std::errc()) type_error(o, path, n, type_name<double>());
  if (!std::isfinite(v)) type_error(o, path, n, "a finite number");
  out = v;
}

void read_value(const YAML::Node& n, bool& out, const Origin& o, const std::string& path) {
  if (!plain_scalar(n)) type_error(o, path, n, type_name<bool>());
  std::string s = n.Scalar();
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "true" || s == "yes" || s == "on") out = true;
  else if (s == "false" || s == "no" || s == "off") out = false;
  else type_error(o, path, n, type_name<bool>());
}

void read_value(const YAML::Node& n, std::string& out, const Origin& o, const std::string& path) {
  if (n.IsNull()) {  // `key:` with nothing, or `~`: the empty string
    out.clear();
    return;
  }
  if (!n.IsScalar()) type_error(o, path, n, type_name<std::string>());
  out = n.Scalar();
}

// An enumerated choice: one of the names of its table (core/choices.h).
template <NamedEnum E>
void read_value(const YAML::Node& n, E& out, const Origin& o, const std::string& path) {
  if (!n.IsScalar()) type_error(o, path, n, ("one of " + names_of<E>()).c_str());
  const std::optional<E> v = value_named<E>(n.Scalar());
  if (!v)
    throw_usage("{}: {}: '{}' is not one of {}{}", o.prefix(), path, n.Scalar(), names_of<E>(),
                o.override_.empty() ? line_note(o.line > 0 ? o.line : line_of(n)) : std::string());
  out = *v;
}

template <Section T>
void read_value(const YAML::Node& n, T& section, const Origin& o, const std::string& path);

// data.train: a path, or a list whose items are a path or a mapping {path, weight}.
void read_value(const YAML::Node& n, DataSources& out, const Origin& o, const std::string& path) {
  if (n.IsNull() || n.IsScalar()) {
    std::string file;
    read_value(n, file, o, path);
    out = file;
    return;
  }
  if (!n.IsSequence()) type_error(o, path, n, "a token file path, or a list of {path, weight} (a blend)");
  if (n.size() == 0) type_error(o, path, n, "a token file path, or a non-empty list of {path, weight}");
  out.items.clear();
  for (size_t i = 0; i < n.size(); ++i) {
    const YAML::Node item = n[i];
    const std::string at = fmt::format("{}[{}]", path, i);
    DataSource src;
    if (item.IsMap()) read_value(item, src, o, at);
    else read_value(item, src.path, o, at);
    if (src.path.empty()) type_error(o, at + ".path", item, "a token file path");
    out.items.push_back(src);
  }
}

// Reads the keys of one mapping into a section: unknown and duplicate keys are errors; absent
// keys keep their defaults.
struct YamlReader {
  const std::map<std::string, std::pair<YAML::Node, YAML::Node>>& values;  // key -> (key, value)
  const Origin& origin;
  const std::string& prefix;
  template <class T> void operator()(const char* key, T& field) {
    auto it = values.find(key);
    if (it == values.end()) return;
    Origin o = origin;
    o.line = line_of(it->second.first);  // a null value's own mark points past it
    read_value(it->second.second, field, o, join_path(prefix, key));
  }
};

template <Section T>
void read_value(const YAML::Node& n, T& section, const Origin& o, const std::string& path) {
  const std::vector<std::string> keys = keys_of(section);
  if (n.IsNull()) return;  // `section:` with nothing under it: all defaults
  if (!n.IsMap()) {
    if (path.empty())
      throw_usage("{}: expected a mapping of sections ({}) at the top level, got {}{}", o.prefix(),
                  fmt::join(keys, ", "), describe(n), line_note(n));
    type_error(o, path, n, "a mapping (a section with keys)",
               fmt::format(" ({})", known_keys_note(path, keys)));
  }
  std::map<std::string, std::pair<YAML::Node, YAML::Node>> values;
  for (const auto& kv : n) {  // (yaml-cpp's it->first would dangle: operator-> returns a proxy)
    const YAML::Node k = kv.first;
    if (!k.IsScalar())
      throw_usage("{}: {}: keys must be plain names, got {}{}", o.prefix(),
                  path.empty() ? "top level" : path, describe(k), line_note(k));
    const std::string key = k.Scalar();
    const std::string full = join_path(path, key);
    if (std::find(keys.begin(), keys.end(), key) == keys.end())
      throw_usage("{}: unknown key '{}'{} ({})", o.prefix(), full,
                  line_of(k) > 0 ? fmt::format(" at line {}", line_of(k)) : std::string(),
                  known_keys_note(path, keys));
    if (!values.emplace(key, std::make_pair(k, YAML::Node(kv.second))).second)
      throw_usage("{}: duplicate key '{}'{}", o.prefix(), full, line_note(k));
  }
  YamlReader r{values, o, path};
  section.visit(r);
}

// ---- overrides ----

struct OverrideSetter {
  const std::vector<std::string>& parts;
  size_t depth;
  const YAML::Node& value;
  const Origin& origin;
  bool found = false;

  template <class T> void operator()(const char* key, T& field) {
    if (found || parts[depth] != key) return;
    found = true;
    std::string path;
    for (size_t i = 0; i <= depth; ++i) path = join_path(path, parts[i]);
    const bool last = depth + 1 == parts.size();
    if constexpr (Section<T>) {
      if (last)
        throw_usage("{}: '{}' is a section, not a value; set one of its keys ({})", origin.prefix(),
                    path, known_keys_note(path, keys_of(field)));
      apply(field, parts, depth + 1, value, origin, path);
    } else {
      if (!last)
        throw_usage("{}: unknown key '{}' ('{}' is a value, not a section)", origin.prefix(),
                    join_path(path, parts[depth + 1]), path);
      read_value(value, field, origin, path);
    }
  }

  template <Section S>
  static void apply(S& section, const std::vector<std::string>& parts, size_t depth,
                    const YAML::Node& value, const Origin& origin, const std::string& path) {
    OverrideSetter s{parts, depth, value, origin};
    section.visit(s);
    if (!s.found)
      throw_usage("{}: unknown key '{}' ({})", origin.prefix(), join_path(path, parts[depth]),
                  known_keys_note(path, keys_of(section)));
  }
};

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

void apply_override(ExperimentConfig& cfg, const std::string& ov, const std::string& file) {
  Origin o{file, ov};
  const size_t eq = ov.find('=');
  if (eq == std::string::npos)
    throw_usage("override '{}': expected KEY=VALUE, e.g. train.steps=100 or model.moe.top_k=2", ov);
  const std::string key = trim(ov.substr(0, eq));
  const std::string text = ov.substr(eq + 1);
  std::vector<std::string> parts;
  {
    std::stringstream ss(key);
    std::string p;
    while (std::getline(ss, p, '.')) parts.push_back(p);
    if (!key.empty() && key.back() == '.') parts.emplace_back();
  }
  if (key.empty() || std::any_of(parts.begin(), parts.end(), [](auto& p) { return p.empty(); }))
    throw_usage("override '{}': malformed key '{}' (expected a dotted path such as model.moe.top_k)",
                ov, key);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw_usage("override '{}': the value '{}' is not a valid YAML scalar: {} (quote it)", ov, text,
                e.msg);
  }
  OverrideSetter::apply(cfg, parts, 0, value, o, "");
}

// ---- writing ----

std::string format_double(double v) {
  std::string s = fmt::format("{}", v);  // shortest representation that round-trips
  if (s.find_first_of(".eEn") == std::string::npos) {
    s += ".0";
  } else if (s.find('.') == std::string::npos && s.find_first_of("eE") != std::string::npos) {
    s.insert(s.find_first_of("eE"), ".0");  // 1e-08 -> 1.0e-08 (a float for YAML 1.1 readers too)
  }
  return s;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

struct YamlWriter {
  std::string& out;
  int indent = 0;
  template <class T> void operator()(const char* key, T& field) {
    const std::string pad(static_cast<size_t>(indent), ' ');
    if constexpr (Section<T>) {
      out += fmt::format("{}{}:\n", pad, key);
      YamlWriter w{out, indent + 2};
      field.visit(w);
    } else if constexpr (std::is_same_v<T, int64_t>) {
      out += fmt::format("{}{}: {}\n", pad, key, field);
    } else if constexpr (std::is_same_v<T, double>) {
      out += fmt::format("{}{}: {}\n", pad, key, format_double(field));
    } else if constexpr (std::is_same_v<T, bool>) {
      out += fmt::format("{}{}: {}\n", pad, key, field ? "true" : "false");
    } else if constexpr (std::is_same_v<T, std::string>) {
      out += fmt::format("{}{}: {}\n", pad, key, quote(field));
    } else if constexpr (std::is_same_v<T, DataSources>) {
      if (!field.blend() && (field.empty() || field.items[0].weight == 1.0)) {
        out += fmt::format("{}{}: {}\n", pad, key, quote(field.empty() ? std::string() : field.items[0].path));
      } else {
        out += fmt::format("{}{}:\n", pad, key);
        for (const auto& src : field.items)
          out += fmt::format("{}  - {{path: {}, weight: {}}}\n", pad, quote(src.path), format_double(src.weight));
      }
    } else if constexpr (NamedEnum<T>) {
      out += fmt::format("{}{}: {}\n", pad, key, quote(std::string(name_of(field))));
    } else {
      static_assert(sizeof(T) == 0, "config field of an unsupported type");
    }
  }
};

// ---- validation helpers ----

struct Checker {
  const std::string& origin;
  template <typename... Args>
  void require(bool ok, const std::string& path, fmt::format_string<Args...> f, Args&&... args) const {
    if (!ok) throw_usage("{}: {}: {}", origin, path, fmt::format(f, std::forward<Args>(args)...));
  }
  void positive(int64_t v, const std::string& path) const {
    require(v > 0, path, "must be positive, got {}", v);
  }
  void at_most(int64_t v, int64_t most, const std::string& path) const {
    require(v <= most, path, "{} is more than the largest supported value {}", v, most);
  }
  void non_negative(int64_t v, const std::string& path) const {
    require(v >= 0, path, "must be >= 0, got {}", v);
  }
  void positive(double v, const std::string& path) const {
    require(std::isfinite(v) && v > 0, path, "must be positive, got {}", v);
  }
  void non_negative(double v, const std::string& path) const {
    require(std::isfinite(v) && v >= 0, path, "must be >= 0, got {}", v);
  }
};

}  // namespace

// ---- public API ----

ExperimentConfig parse_experiment_config(const std::string& yaml_text, const std::string& origin,
                                         const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    if (docs.size() > 1)
      throw_usage("{}: holds {} YAML documents (separated by `---`); a config is one document: merge them or "
                  "remove the separator", origin, docs.size());
    if (!docs.empty()) root = docs[0];
  } catch (const YAML::Exception& e) {
    if (e.mark.line >= 0)
      throw_usage("{}: YAML syntax error at line {}, column {}: {}", origin, e.mark.line + 1,
                  e.mark.column + 1, e.msg);
    throw_usage("{}: YAML syntax error: {}", origin, e.msg);
  }
  ExperimentConfig cfg;
  const Origin o{origin, {}};
  read_value(root, cfg, o, "");
  for (const std::string& ov : overrides) apply_override(cfg, ov, origin);
  validate(cfg, origin);
  return cfg;
}

ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    const fs::path cwd = fs::current_path(ec);
    throw_usage("{}: config file not found (relative paths are taken from the current directory {}; "
                "example configs are in the repository's configs/, e.g. configs/tiny.yaml)",
                path, cwd.string());
  }
  if (fs::is_directory(st)) throw_usage("{}: is a directory, expected a YAML config file", path);
  if (!fs::is_regular_file(st))
    throw_usage("{}: is not a regular file (a device, pipe or socket); expected a YAML config file", path);
  constexpr std::uintmax_t kMaxConfigBytes = 1 << 20;
  if (const std::uintmax_t size = fs::file_size(path, ec); !ec && size > kMaxConfigBytes)
    throw_usage("{}: {} bytes; a YAML config is at most {} bytes (is this the right file?)", path, size,
                kMaxConfigBytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_usage("{}: cannot open the config file for reading (check its permissions)", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_usage("{}: error while reading the config file", path);
  return parse_experiment_config(ss.str(), path, overrides);
}

namespace {
// Upper bounds far above any model this trains (Mixtral 8x22B: d_model 6144, 56 layers, vocab 32768,
// expert size 16384), so that sizes and their products stay exact in int64 and a typo (1e9 layers)
// is an error naming the key instead of minutes of allocation and std::bad_alloc.
constexpr int64_t kMaxDim = int64_t{1} << 20, kMaxVocab = int64_t{1} << 24, kMaxLayers = 4096,
                  kMaxHeads = 4096, kMaxExperts = 65536, kMaxSeq = int64_t{1} << 24, kMaxParams = int64_t{1} << 42;
}  // namespace

int64_t max_threads() { return std::max<int64_t>(256, 4 * static_cast<int64_t>(std::thread::hardware_concurrency())); }

void validate(const ModelConfig& m, const std::string& origin) {
  const Checker c{origin};
  c.at_most(m.vocab_size, kMaxVocab, "model.vocab_size");
  c.at_most(m.d_model, kMaxDim, "model.d_model");
  c.at_most(m.n_layers, kMaxLayers, "model.n_layers");
  c.at_most(m.n_heads, kMaxHeads, "model.n_heads");
  c.at_most(m.n_kv_heads, kMaxHeads, "model.n_kv_heads");
  c.at_most(m.head_dim, kMaxDim, "model.head_dim");
  c.at_most(m.max_seq_len, kMaxSeq, "model.max_seq_len");
  c.at_most(m.dense_ffn_size, kMaxDim, "model.dense_ffn_size");
  c.at_most(m.moe.n_experts, kMaxExperts, "model.moe.n_experts");
  c.at_most(m.moe.expert_size, kMaxDim, "model.moe.expert_size");
  c.at_most(m.moe.shared_expert_size, kMaxDim, "model.moe.shared_expert_size");
  c.positive(m.vocab_size, "model.vocab_size");
  c.positive(m.d_model, "model.d_model");
  c.positive(m.n_layers, "model.n_layers");
  c.positive(m.n_heads, "model.n_heads");
  c.positive(m.n_kv_heads, "model.n_kv_heads");
  c.non_negative(m.head_dim, "model.head_dim");
  c.positive(m.max_seq_len, "model.max_seq_len");
  c.positive(m.rope_theta, "model.rope_theta");
  c.positive(m.rms_norm_eps, "model.rms_norm_eps");
  c.non_negative(m.init_std, "model.init_std");
  c.require(m.n_heads % m.n_kv_heads == 0, "model.n_heads",
            "{} is not a multiple of model.n_kv_heads = {} (grouped-query attention shares each "
            "kv head among n_heads / n_kv_heads query heads)",
            m.n_heads, m.n_kv_heads);
  if (m.head_dim == 0) {
    c.require(m.d_model % m.n_heads == 0, "model.d_model",
              "{} is not a multiple of model.n_heads = {} (with model.head_dim = 0 the head size "
              "is d_model / n_heads; set model.head_dim explicitly otherwise)",
              m.d_model, m.n_heads);
  }
  c.require(m.hd() % 2 == 0, m.head_dim > 0 ? "model.head_dim" : "model.d_model",
            "the head size {} must be even (RoPE rotates pairs of dimensions)", m.hd());
  c.require(m.first_dense_layers >= 0 && m.first_dense_layers <= m.n_layers,
            "model.first_dense_layers", "must be in [0, model.n_layers = {}], got {}", m.n_layers,
            m.first_dense_layers);
  if (m.first_dense_layers > 0) c.positive(m.dense_ffn_size, "model.dense_ffn_size");
  else c.non_negative(m.dense_ffn_size, "model.dense_ffn_size");
  const MoeConfig& e = m.moe;
  c.positive(e.n_experts, "model.moe.n_experts");
  c.require(e.top_k >= 1 && e.top_k <= e.n_experts, "model.moe.top_k",
            "must be in [1, model.moe.n_experts = {}], got {}", e.n_experts, e.top_k);
  c.require(e.router.top_p >= 0 && e.router.top_p <= 1, "model.moe.router.top_p",
            "must be in [0, 1] (0: off, fixed top_k experts per token), got {}", e.router.top_p);
  if (e.router.top_p > 0)
    c.require(e.router.k_max >= 1 && e.router.k_max <= e.n_experts, "model.moe.router.k_max",
              "must be in [1, model.moe.n_experts = {}] when model.moe.router.top_p > 0 (the most "
              "experts a token takes), got {}", e.n_experts, e.router.k_max);
  c.positive(e.expert_size, "model.moe.expert_size");
  c.non_negative(e.shared_expert_size, "model.moe.shared_expert_size");
  c.non_negative(e.aux_loss_coef, "model.moe.aux_loss_coef");
  c.non_negative(e.z_loss_coef, "model.moe.z_loss_coef");
  c.non_negative(e.balance.bias_rate, "model.moe.balance.bias_rate");
  c.non_negative(e.router.capacity_factor, "model.moe.router.capacity_factor");
  c.non_negative(e.router.min_capacity, "model.moe.router.min_capacity");
  // parameters, in double (each factor is bounded above, so this is exact enough to compare)
  const double H = static_cast<double>(m.d_model), HD = static_cast<double>(m.hd()),
               attn = H * HD * static_cast<double>(2 * m.n_heads + 2 * m.n_kv_heads),
               moe = static_cast<double>(e.n_experts) * 3 * H * static_cast<double>(e.expert_size) +
                     3 * H * static_cast<double>(e.shared_expert_size),
               params = static_cast<double>(m.n_layers) * (attn + moe) + 2 * H * static_cast<double>(m.vocab_size);
  c.require(params <= static_cast<double>(kMaxParams), "model", "{:.3g} parameters is more than {:.3g}; check "
            "model.n_layers, d_model, vocab_size and moe.n_experts / expert_size", params,
            static_cast<double>(kMaxParams));
}

void validate(const DataConfig& d, const Checker& c) {
  for (size_t i = 0; i < d.train.items.size(); ++i)
    c.require(d.train.items[i].weight > 0 && std::isfinite(d.train.items[i].weight),
              fmt::format("data.train[{}].weight", i), "must be positive (the share of draws from {}), got {}",
              d.train.items[i].path, d.train.items[i].weight);
  const bool document = d.sample == SampleUnit::document;
  c.require(document || !d.packing, "data.packing", "packs whole documents: it needs data.sample: document");
  c.require(document || !d.mining.enabled, "data.mining.enabled",
            "scores samples: it needs data.sample: document (a window is not a sample that comes back)");
  c.require(document || !d.noise.enabled, "data.noise.enabled",
            "scores samples: it needs data.sample: document (a window is not a sample that comes back)");
  c.require(d.stats_ema >= 0 && d.stats_ema < 1, "data.stats_ema", "must be in [0, 1), got {}", d.stats_ema);
  const MiningConfig& m = d.mining;
  c.non_negative(m.warmup_steps, "data.mining.warmup_steps");
  c.positive(m.min_visits, "data.mining.min_visits");
  c.non_negative(m.threshold, "data.mining.threshold");
  c.non_negative(m.strength, "data.mining.strength");
  c.require(std::isfinite(m.max_weight) && m.max_weight >= 1, "data.mining.max_weight", "must be >= 1, got {}",
            m.max_weight);
  const NoiseConfig& n = d.noise;
  c.non_negative(n.warmup_steps, "data.noise.warmup_steps");
  c.positive(n.min_visits, "data.noise.min_visits");
  c.non_negative(n.threshold, "data.noise.threshold");
  c.non_negative(n.max_slope, "data.noise.max_slope");
  c.require(n.sample_weight > 0 && n.sample_weight <= 1, "data.noise.sample_weight", "must be in (0, 1], got {}",
            n.sample_weight);
  c.require(n.loss_weight >= 0 && n.loss_weight <= 1, "data.noise.loss_weight", "must be in [0, 1], got {}",
            n.loss_weight);
}

void validate(const ExperimentConfig& cfg, const std::string& origin) {
  const Checker c{origin};
  c.require(!cfg.run.name.empty(), "run.name", "must not be empty");
  validate(cfg.model, origin);

  const TrainConfig& t = cfg.train;
  c.positive(t.steps, "train.steps");
  c.positive(t.micro_batch, "train.micro_batch");
  c.positive(t.seq_len, "train.seq_len");
  c.require(t.seq_len <= cfg.model.max_seq_len, "train.seq_len",
            "{} is longer than model.max_seq_len = {}", t.seq_len, cfg.model.max_seq_len);
  c.positive(t.grad_accum, "train.grad_accum");
  c.at_most(t.steps, int64_t{1} << 40, "train.steps");
  c.at_most(t.micro_batch, int64_t{1} << 20, "train.micro_batch");
  c.at_most(t.grad_accum, int64_t{1} << 20, "train.grad_accum");
  c.require(static_cast<double>(t.micro_batch) * static_cast<double>(t.seq_len) *
                    static_cast<double>(std::max(cfg.model.d_model, cfg.model.moe.expert_size)) <=
                static_cast<double>(int64_t{1} << 42),
            "train.micro_batch", "{} sequences of train.seq_len = {} tokens make activations of {:.3g} values per "
            "layer, more than any machine holds; lower train.micro_batch (and raise train.grad_accum)",
            t.micro_batch, t.seq_len,
            static_cast<double>(t.micro_batch) * static_cast<double>(t.seq_len) *
                static_cast<double>(std::max(cfg.model.d_model, cfg.model.moe.expert_size)));
  const LossScalerConfig& ls = t.loss_scaler;
  c.positive(ls.initial_scale, "train.loss_scaler.initial_scale");
  c.require(ls.growth_factor >= 1, "train.loss_scaler.growth_factor", "must be >= 1, got {}", ls.growth_factor);
  c.require(ls.backoff_factor > 0 && ls.backoff_factor < 1, "train.loss_scaler.backoff_factor",
            "must be in (0, 1), got {}", ls.backoff_factor);
  c.positive(ls.growth_interval, "train.loss_scaler.growth_interval");
  c.positive(ls.hysteresis, "train.loss_scaler.hysteresis");
  c.positive(ls.min_scale, "train.loss_scaler.min_scale");
  c.require(ls.min_scale <= ls.initial_scale, "train.loss_scaler.min_scale",
            "{} is larger than train.loss_scaler.initial_scale = {}", ls.min_scale, ls.initial_scale);
  c.positive(ls.max_overflows_at_min, "train.loss_scaler.max_overflows_at_min");
  c.non_negative(t.activation_memory_mb, "train.activation_memory_mb");
  c.non_negative(t.seed, "train.seed");
  c.non_negative(t.threads, "train.threads");
  c.at_most(t.threads, max_threads(), "train.threads");
  c.positive(t.log_interval, "train.log_interval");
  c.non_negative(t.eval_interval, "train.eval_interval");
  c.non_negative(t.eval_windows, "train.eval_windows");
  c.non_negative(cfg.checkpoint.interval, "checkpoint.interval");
  validate(cfg.data, c);
  c.positive(cfg.checkpoint.keep_last, "checkpoint.keep_last");
  const ObserveConfig& ob = cfg.observe;
  c.require(ob.prometheus_port >= 0 && ob.prometheus_port <= 65535, "observe.prometheus_port",
            "must be a TCP port in 1..65535, or 0 for off; got {}", ob.prometheus_port);
  c.require(!ob.prometheus_address.empty(), "observe.prometheus_address",
            "must not be empty (0.0.0.0: every interface, 127.0.0.1: this host only)");
  c.non_negative(ob.peak_tflops, "observe.peak_tflops");

  const OptimConfig& o = cfg.optim;
  c.positive(o.lr, "optim.lr");
  c.non_negative(o.min_lr, "optim.min_lr");
  c.require(o.min_lr <= o.lr, "optim.min_lr", "{} is larger than optim.lr = {}", o.min_lr, o.lr);
  c.non_negative(o.warmup_steps, "optim.warmup_steps");
  c.non_negative(o.weight_decay, "optim.weight_decay");
  c.require(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1", "must be in [0, 1), got {}", o.beta1);
  c.require(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2", "must be in [0, 1), got {}", o.beta2);
  c.positive(o.eps, "optim.eps");
  c.non_negative(o.grad_clip, "optim.grad_clip");
  const ExpertDecayConfig& xd = o.expert_decay;
  c.non_negative(xd.alpha, "optim.expert_decay.alpha");
  c.require(xd.ema >= 0 && xd.ema < 1, "optim.expert_decay.ema", "must be in [0, 1), got {}", xd.ema);
  c.positive(xd.min, "optim.expert_decay.min");
  c.require(std::isfinite(xd.max) && xd.max >= xd.min, "optim.expert_decay.max",
            "{} is smaller than optim.expert_decay.min = {}", xd.max, xd.min);

  const int64_t ep = cfg.parallel.expert_parallel;
  c.positive(ep, "parallel.expert_parallel");
  c.require(cfg.model.moe.n_experts % ep == 0, "parallel.expert_parallel",
            "{} does not divide model.moe.n_experts = {} (each rank holds n_experts / "
            "expert_parallel experts)",
            ep, cfg.model.moe.n_experts);
  const auto& par = cfg.parallel;
  c.non_negative(par.ranks_per_node, "parallel.ranks_per_node");
  c.positive(par.intra_latency_us, "parallel.intra_latency_us");
  c.positive(par.intra_bandwidth_gbs, "parallel.intra_bandwidth_gbs");
  c.positive(par.inter_latency_us, "parallel.inter_latency_us");
  c.positive(par.inter_bandwidth_gbs, "parallel.inter_bandwidth_gbs");
  c.non_negative(par.timeout_s, "parallel.timeout_s");
}

std::string to_yaml(const ExperimentConfig& cfg) {
  ExperimentConfig copy = cfg;  // visit() is non-const
  std::string out;
  YamlWriter w{out, 0};
  copy.visit(w);
  return out;
}

}  // namespace switchyard::core
