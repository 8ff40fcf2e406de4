#include "launch/observers.h"

#include "launch/prometheus.h"

namespace switchyard::launch {

std::vector<std::unique_ptr<RunObserver>> make_observers(const ObservedRun& run) {
  std::vector<std::unique_ptr<RunObserver>> out;
  if (auto prometheus = make_prometheus_observer(run)) out.push_back(std::move(prometheus));
  return out;
}

}  // namespace switchyard::launch
