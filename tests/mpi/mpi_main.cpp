// tests/mpi/mpi_main.cpp: main() of every MPI test executable. Initialises MPI, runs GoogleTest on
// every rank (each test is collective: all ranks run the same tests in the same order), prints the
// full report on rank 0 and only failures, prefixed by the rank, elsewhere, and exits non-zero on
// every rank if any rank failed. A test that fails on one rank only and leaves the others waiting
// in a collective ends by ctest's timeout.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

#include "parallel/collectives.h"
#include "parallel/mpi_context.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::printf("[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                r.message());
    std::fflush(stdout);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) std::printf("[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  switchyard::parallel::MpiContext mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (mpi.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(mpi.rank()));
  }
  const int rc = RUN_ALL_TESTS();
  const bool failed = switchyard::parallel::any_rank(rc != 0, MPI_COMM_WORLD);
  if (mpi.rank() == 0)
    std::printf("%s on %d ranks\n", failed ? "FAILED (see [rank N] lines)" : "PASSED", mpi.size());
  return failed ? 1 : 0;
}
