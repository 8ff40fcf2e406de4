// parallel/device_check_communicator.cpp: checks each buffer where NCCL would need it (device or
// host memory), opens the device regions for the call and forwards to the inner communicator.
#include "parallel/device_check_communicator.h"

#include <algorithm>

#include "core/error.h"

namespace switchyard::parallel {
namespace {

template <class T>
size_t n_of(int64_t n) {
  return n > 0 ? static_cast<size_t>(n) * sizeof(T) : 0;
}
// Bytes of an alltoallv buffer up to the end of its last non-empty message.
size_t extent(std::span<const int64_t> counts, std::span<const int64_t> displs) {
  int64_t end = 0;
  for (size_t r = 0; r < counts.size() && r < displs.size(); ++r)
    if (counts[r] > 0) end = std::max(end, displs[r] + counts[r]);
  return static_cast<size_t>(end);
}

}  // namespace

DeviceCheckCommunicator::DeviceCheckCommunicator(std::unique_ptr<Communicator> inner,
                                                 std::shared_ptr<core::DeviceCheckRegistry> registry)
    : owned_(std::move(inner)), inner_(owned_.get()), registry_(std::move(registry)) {
  SY_CHECK(inner_ != nullptr && registry_ != nullptr, "device-check communicator without inner communicator or registry");
}

DeviceCheckCommunicator::DeviceCheckCommunicator(Communicator& inner, std::shared_ptr<core::DeviceCheckRegistry> registry)
    : inner_(&inner), registry_(std::move(registry)) {
  SY_CHECK(registry_ != nullptr, "device-check communicator without a registry");
}

void DeviceCheckCommunicator::allreduce_sum(float* data, int64_t n) {
  auto c = stream_ordered("allreduce_sum");
  c.device("data", data, n_of<float>(n)).open();
  inner_->allreduce_sum(data, n);
}
void DeviceCheckCommunicator::allreduce_sum(double* data, int64_t n) {
  auto c = stream_ordered("allreduce_sum");
  c.device("data", data, n_of<double>(n)).open();
  inner_->allreduce_sum(data, n);
}
void DeviceCheckCommunicator::allreduce_sum(int64_t* data, int64_t n) {
  auto c = stream_ordered("allreduce_sum");
  c.device("data", data, n_of<int64_t>(n)).open();
  inner_->allreduce_sum(data, n);
}

void DeviceCheckCommunicator::allreduce_max(int64_t* data, int64_t n) {
  host_control("allreduce_max").host("data", data, n_of<int64_t>(n));
  inner_->allreduce_max(data, n);
}
void DeviceCheckCommunicator::allreduce_min(int64_t* data, int64_t n) {
  host_control("allreduce_min").host("data", data, n_of<int64_t>(n));
  inner_->allreduce_min(data, n);
}
void DeviceCheckCommunicator::broadcast(void* data, int64_t bytes, int root) {
  host_control("broadcast").host("data", data, n_of<char>(bytes));
  inner_->broadcast(data, bytes, root);
}

Request DeviceCheckCommunicator::allreduce_sum_async(float* data, int64_t n) {
  auto c = std::make_unique<Access>(*registry_, "allreduce_sum_async", "a stream-ordered collective");
  c->device("data", data, n_of<float>(n)).open();
  Request request = inner_->allreduce_sum_async(data, n);
  if (request.pending()) in_flight_.emplace(request.id, std::move(c));  // open until wait()
  return request;
}
void DeviceCheckCommunicator::wait(Request& request) {
  std::unique_ptr<Access> in_flight;  // closes its region once the wait returns (or throws)
  if (auto it = in_flight_.find(request.id); it != in_flight_.end()) {
    in_flight = std::move(it->second);
    in_flight_.erase(it);
  }
  inner_->wait(request);
}

void DeviceCheckCommunicator::allgather(const int64_t* send, int64_t* recv, int64_t count) {
  auto c = stream_ordered("allgather");
  c.device("send", send, n_of<int64_t>(count)).device("recv", recv, n_of<int64_t>(count * size())).open();
  inner_->allgather(send, recv, count);
}
void DeviceCheckCommunicator::alltoall(const int64_t* send, int64_t* recv, int64_t count) {
  auto c = stream_ordered("alltoall");
  c.device("send", send, n_of<int64_t>(count * size())).device("recv", recv, n_of<int64_t>(count * size())).open();
  inner_->alltoall(send, recv, count);
}
void DeviceCheckCommunicator::alltoallv(const void* send, std::span<const int64_t> send_counts,
                                        std::span<const int64_t> send_displs, void* recv,
                                        std::span<const int64_t> recv_counts,
                                        std::span<const int64_t> recv_displs) {
  auto c = stream_ordered("alltoallv");
  c.host("send_counts", send_counts.data(), send_counts.size_bytes())
      .host("send_displs", send_displs.data(), send_displs.size_bytes())
      .host("recv_counts", recv_counts.data(), recv_counts.size_bytes())
      .host("recv_displs", recv_displs.data(), recv_displs.size_bytes())
      .device("send", send, extent(send_counts, send_displs))
      .device("recv", recv, extent(recv_counts, recv_displs))
      .open();
  inner_->alltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs);
}

std::unique_ptr<Communicator> DeviceCheckCommunicator::split(int color, int key) {
  return std::make_unique<DeviceCheckCommunicator>(inner_->split(color, key), registry_);
}
std::unique_ptr<Communicator> DeviceCheckCommunicator::split_shared_memory() {
  return std::make_unique<DeviceCheckCommunicator>(inner_->split_shared_memory(), registry_);
}

std::unique_ptr<Communicator> make_device_check_communicator(std::unique_ptr<Communicator> inner,
                                                             std::shared_ptr<core::DeviceCheckRegistry> registry) {
  return std::make_unique<DeviceCheckCommunicator>(std::move(inner), std::move(registry));
}
std::unique_ptr<Communicator> make_device_check_communicator(Communicator& inner,
                                                             std::shared_ptr<core::DeviceCheckRegistry> registry) {
  return std::make_unique<DeviceCheckCommunicator>(inner, std::move(registry));
}

}  // namespace switchyard::parallel
