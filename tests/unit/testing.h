// tests/unit/testing.h: helpers shared by the unit tests (random tensors, tolerances, temp dirs).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace switchyard::test {

// Deterministic normal(0, stddev) values.
std::vector<float> randn(int64_t n, uint64_t seed, float stddev = 1.0f);
// Largest |a-b| / max(|b|, floor) over the elements (relative error with an absolute floor).
double max_rel_error(const float* a, const float* b, int64_t n, double floor = 1e-3);
// A fresh empty directory under the build tree, named after the current test.
std::filesystem::path temp_dir(const std::string& name);

}  // namespace switchyard::test
