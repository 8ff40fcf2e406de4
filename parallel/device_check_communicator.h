// parallel/device_check_communicator.h: the device-discipline checker's communicator
// (core/device_check_backend.h): a Communicator on "device" memory, the regions of a device-check
// backend, that wraps a host communicator (an MpiCommunicator in practice), so that code written
// for NCCL runs on CPU-only machines with every buffer checked where NCCL would need it:
//   [stream-ordered] calls  (allreduce_sum, allreduce_sum_async, allgather, alltoall, alltoallv):
//       every buffer inside one device allocation with the extent the call uses (alltoallv: from
//       the counts and displacements, which must be host memory); the call runs with those
//       regions open (MPI reads them). allreduce_sum_async keeps its buffer's region open until
//       the matching wait(): MPI may progress it in between, and host code still may not touch it
//       (only the other regions stay protected).
//   host-control calls  (allreduce_max/min, broadcast): host memory, overlapping no device region.
//   host()  the inner communicator's host(): the same ranks on host memory, unchecked (a device
//       pointer given to it is dereferenced by MPI from the host and dies with SIGSEGV).
//   split(), split_shared_memory()  the inner split behind the checker, sharing the registry.
// A failed check throws an internal Error before any communication, e.g.
//   device-check: allreduce_sum: data (0x...) is not device memory (a host pointer passed to a
//   stream-ordered collective)
#pragma once

#include <map>
#include <memory>

#include "core/device_check_registry.h"
#include "parallel/communicator.h"

namespace switchyard::parallel {

class DeviceCheckCommunicator final : public Communicator {
 public:
  // Owns `inner`.
  DeviceCheckCommunicator(std::unique_ptr<Communicator> inner, std::shared_ptr<core::DeviceCheckRegistry> registry);
  // Borrows `inner`, which must outlive this communicator (the trainer's world communicator).
  DeviceCheckCommunicator(Communicator& inner, std::shared_ptr<core::DeviceCheckRegistry> registry);
  DeviceCheckCommunicator(const DeviceCheckCommunicator&) = delete;
  DeviceCheckCommunicator& operator=(const DeviceCheckCommunicator&) = delete;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return "device-check(" + inner_->name() + ")"; }
  MemorySpace memory_space() const override { return MemorySpace::device; }
  Communicator& host() override { return inner_->host(); }

  void barrier() override { inner_->barrier(); }
  void allreduce_sum(float* data, int64_t n) override;
  void allreduce_sum(double* data, int64_t n) override;
  void allreduce_sum(int64_t* data, int64_t n) override;
  void allreduce_max(int64_t* data, int64_t n) override;
  void allreduce_min(int64_t* data, int64_t n) override;
  void broadcast(void* data, int64_t bytes, int root) override;
  Request allreduce_sum_async(float* data, int64_t n) override;
  void wait(Request& request) override;
  void allgather(const int64_t* send, int64_t* recv, int64_t count) override;
  void alltoall(const int64_t* send, int64_t* recv, int64_t count) override;
  void alltoallv(const void* send, std::span<const int64_t> send_counts,
                 std::span<const int64_t> send_displs, void* recv,
                 std::span<const int64_t> recv_counts,
                 std::span<const int64_t> recv_displs) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::unique_ptr<Communicator> split_shared_memory() override;

 private:
  using Access = core::DeviceCheckRegistry::Access;
  Access stream_ordered(const char* method) { return {*registry_, method, "a stream-ordered collective"}; }
  Access host_control(const char* method) { return {*registry_, method, "a host-control collective"}; }

  std::unique_ptr<Communicator> owned_;
  Communicator* inner_ = nullptr;
  std::shared_ptr<core::DeviceCheckRegistry> registry_;
  std::map<int64_t, std::unique_ptr<Access>> in_flight_;  // allreduce_sum_async id -> its open buffer
};

// `inner` behind the checker, on the regions of `registry` (core::device_check_registry(backend)).
std::unique_ptr<Communicator> make_device_check_communicator(std::unique_ptr<Communicator> inner,
                                                             std::shared_ptr<core::DeviceCheckRegistry> registry);
// The same over a borrowed `inner`, which must outlive the result.
std::unique_ptr<Communicator> make_device_check_communicator(Communicator& inner,
                                                             std::shared_ptr<core::DeviceCheckRegistry> registry);

}  // namespace switchyard::parallel
