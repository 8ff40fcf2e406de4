// core/formats/protobuf_wire.h: a writer for the protobuf wire format (varints, fixed 64/32-bit
// fields, length-delimited fields, packed doubles): enough to encode the few small messages
// Switchyard sends to other tools (TensorBoard's Event, launch/tensorboard.h) without protoc or a
// generated-code dependency. Fields are written in the order they are called; callers write them in
// field-number order, as protoc does, so the bytes match a generated serializer's.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace switchyard::core::formats {

// Appends `v` as a base-128 varint (7 bits a byte, low bits first, high bit = more follow).
void append_varint(std::string& out, uint64_t v);

class ProtoWriter {
 public:
  void varint(int field, uint64_t v);   // wire type 0: uint64, enum, bool
  void int64(int field, int64_t v);     // wire type 0: int64 (a negative value takes 10 bytes)
  void fixed64(int field, double v);    // wire type 1: double, little endian
  void fixed32(int field, float v);     // wire type 5: float, little endian
  void bytes(int field, std::string_view v);  // wire type 2: string, bytes or an embedded message
  void packed_doubles(int field, std::span<const double> v);  // wire type 2: repeated double, packed
  const std::string& data() const { return out_; }

 private:
  void key(int field, int wire_type);
  std::string out_;
};

}  // namespace switchyard::core::formats
