#include "launch/observers.h"

#include "launch/prometheus.h"
#include "launch/tensorboard.h"

namespace switchyard::launch {

std::vector<std::unique_ptr<RunObserver>> make_observers(const ObservedRun& run) {
  std::vector<std::unique_ptr<RunObserver>> out;
  // the port first: one in use is refused before the TensorBoard folder is made
  if (auto prometheus = make_prometheus_observer(run)) out.push_back(std::move(prometheus));
  if (run.cfg.observe.tensorboard)
    out.push_back(std::make_unique<TensorBoardWriter>(run.dir / "tensorboard"));
  return out;
}

}  // namespace switchyard::launch
