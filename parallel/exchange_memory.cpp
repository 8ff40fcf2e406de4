// parallel/exchange_memory.cpp: staging buffers and plan arrays in the backend's memory.
#include "parallel/exchange_memory.h"

#include <algorithm>

#include "core/error.h"

namespace switchyard::parallel::detail {

std::byte* Staging::get(int64_t bytes) {
  if (bytes > size_) {
    const int64_t grown = std::max(bytes, size_ + size_ / 2);
    be_.release(data_);
    data_ = nullptr;
    size_ = 0;
    data_ = static_cast<std::byte*>(be_.alloc(static_cast<size_t>(grown)));
    size_ = grown;
  }
  return data_;
}

PlanArrays::~PlanArrays() {
  if (be_ != nullptr) be_->release(block_);
}

void PlanArrays::upload(core::Backend& be) {
  SY_CHECK(be_ == nullptr, "plan arrays uploaded twice");
  be_ = &be;
  block_ = be.alloc(pack_.size());
  if (!pack_.empty()) be.copy_from_host(block_, pack_.data(), pack_.size());
  for (const auto& fix : fixups_) fix(static_cast<const std::byte*>(block_));
  pack_ = {};
  fixups_ = {};
}

}  // namespace switchyard::parallel::detail
