// core/formats/protobuf_wire.cpp: see protobuf_wire.h.
#include "core/formats/protobuf_wire.h"

#include <bit>
#include <cstring>

namespace switchyard::core::formats {
namespace {

template <typename T>
void append_little_endian(std::string& out, T v) {
  static_assert(std::endian::native == std::endian::little, "a big-endian host needs a byte swap here");
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

}  // namespace

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void ProtoWriter::key(int field, int wire_type) {
  append_varint(out_, (static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
}

void ProtoWriter::varint(int field, uint64_t v) {
  key(field, 0);
  append_varint(out_, v);
}

void ProtoWriter::int64(int field, int64_t v) { varint(field, static_cast<uint64_t>(v)); }

void ProtoWriter::fixed64(int field, double v) {
  key(field, 1);
  append_little_endian(out_, v);
}

void ProtoWriter::fixed32(int field, float v) {
  key(field, 5);
  append_little_endian(out_, v);
}

void ProtoWriter::bytes(int field, std::string_view v) {
  key(field, 2);
  append_varint(out_, v.size());
  out_.append(v);
}

void ProtoWriter::packed_doubles(int field, std::span<const double> v) {
  key(field, 2);
  append_varint(out_, v.size() * sizeof(double));
  for (const double d : v) append_little_endian(out_, d);
}

}  // namespace switchyard::core::formats
