// parallel/bench/bench_token_exchange.cpp: `bench_token_exchange`, the driver of
// scripts/bench_a2a.sh. Under mpirun, the whole world is one expert group (E = N ranks, X experts,
// X/N per rank); every rank routes T tokens of d_model floats to K distinct random experts, then
// times, per d_model:
//   flat, hierarchical, auto   make_plan (counts + metadata), dispatch and combine of this library
//   raw MPI_Alltoallv          the same per-slot rows, one MPI_Alltoallv each way (no counts,
//                              no packing, no sum): the floor flat is compared with
//   comm alltoallv             the same through Communicator::alltoallv: transport alone
// Times are the median over iterations of the slowest rank's time (barrier before each). Traffic
// is per rank (mean over ranks) and comes from the exchange's own statistics.
//
//   mpirun -np 4 bench_token_exchange --ranks-per-node 2 --tokens 2048 --d-model 256,1024
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/params.h"
#include "parallel/mpi_check.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_context.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

namespace sy = switchyard;
namespace par = switchyard::parallel;

namespace {

struct Options {
  int64_t tokens = 2048, top_k = 2, experts = 8, ranks_per_node = 2, iters = 20, warmup = 3;
  uint64_t seed = 1;
  std::vector<int64_t> d_models = {256, 1024};
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) sy::throw_usage("{} needs a value", a);
    const std::string v = argv[++i];
    if (a == "--tokens") o.tokens = std::stoll(v);
    else if (a == "--top-k") o.top_k = std::stoll(v);
    else if (a == "--experts") o.experts = std::stoll(v);
    else if (a == "--ranks-per-node") o.ranks_per_node = std::stoll(v);
    else if (a == "--iters") o.iters = std::stoll(v);
    else if (a == "--warmup") o.warmup = std::stoll(v);
    else if (a == "--seed") o.seed = std::stoull(v);
    else if (a == "--d-model") {
      o.d_models.clear();
      for (size_t p = 0; p < v.size();) {
        const size_t q = std::min(v.find(',', p), v.size());
        o.d_models.push_back(std::stoll(v.substr(p, q - p)));
        p = q + 1;
      }
    } else {
      sy::throw_usage("unknown option {} (--tokens --top-k --experts --ranks-per-node --iters --warmup --seed --d-model)", a);
    }
  }
  return o;
}

struct Routing {
  std::vector<int32_t> token, dest, tag;
  std::vector<float> gate;
};

Routing random_routing(const Options& o, int rank, int E) {
  std::mt19937_64 rng(o.seed * 1000003 + static_cast<uint64_t>(rank));
  struct Slot { int64_t expert, token; float gate; };
  std::vector<Slot> slots;
  std::vector<int64_t> experts(static_cast<size_t>(o.experts));
  for (int64_t t = 0; t < o.tokens; ++t) {
    for (int64_t e = 0; e < o.experts; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int64_t k = 0; k < o.top_k; ++k) slots.push_back({experts[k], t, 0.5f});
  }
  std::sort(slots.begin(), slots.end(), [](const Slot& a, const Slot& b) {
    return a.expert != b.expert ? a.expert < b.expert : a.token < b.token;
  });
  Routing r;
  sy::core::ModelConfig model;  // only the expert count matters to the ownership rule
  model.moe.n_experts = o.experts;
  for (const Slot& s : slots) {
    const sy::core::ExpertOwner owner = sy::core::expert_owner(model, s.expert, E);
    r.token.push_back(static_cast<int32_t>(s.token));
    r.dest.push_back(owner.rank);
    r.tag.push_back(owner.local);
    r.gate.push_back(s.gate);
  }
  return r;
}

// Median over iterations of the slowest rank's seconds for fn().
template <class Fn>
double time_median(const Options& o, Fn fn) {
  std::vector<double> t;
  for (int64_t i = 0; i < o.warmup + o.iters; ++i) {
    SY_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    const double start = MPI_Wtime();
    fn();
    double dt = MPI_Wtime() - start;
    SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    if (i >= o.warmup) t.push_back(dt);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Row {
  std::string name;
  double plan_s = 0, dispatch_s = 0, combine_s = 0;
  par::ExchangeStats traffic;  // dispatch, this rank
  std::string note;
};

double mean_over_ranks(double v) {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
  return v / n;
}

void print_table(int rank, const Options& o, int E, int64_t C, const std::vector<Row>& rows) {
  std::vector<double> m;  // means over ranks: inter msgs, inter MB, intra msgs, intra MB per row
  for (const Row& r : rows) {
    m.push_back(mean_over_ranks(static_cast<double>(r.traffic.inter_node.messages)));
    m.push_back(mean_over_ranks(static_cast<double>(r.traffic.inter_node.bytes) / 1e6));
    m.push_back(mean_over_ranks(static_cast<double>(r.traffic.intra_node.messages)));
    m.push_back(mean_over_ranks(static_cast<double>(r.traffic.intra_node.bytes) / 1e6));
  }
  if (rank != 0) return;
  const double flat_total = rows[0].dispatch_s + rows[0].combine_s;
  const double dup = m[5] > 0 ? m[1] / m[5] : 1.0;  // flat inter bytes / hierarchical inter bytes
  std::printf("\n%lld tokens/rank x d_model %lld x 4 B, top-%lld over %lld experts, %d ranks as %lld nodes x %lld; "
              "duplicate factor (inter-node bytes flat / hierarchical) %.3f\n",
              static_cast<long long>(o.tokens), static_cast<long long>(C), static_cast<long long>(o.top_k),
              static_cast<long long>(o.experts), E, static_cast<long long>(E / std::min<int64_t>(E, o.ranks_per_node)),
              static_cast<long long>(std::min<int64_t>(E, o.ranks_per_node)), dup);
  std::printf("| %-16s | plan ms | dispatch ms | combine ms | total ms | x flat | inter msgs/rank | inter MB/rank | "
              "intra msgs/rank | intra MB/rank | note |\n",
              "exchange");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double total = r.dispatch_s + r.combine_s;
    std::printf("| %-16s | %7.3f | %11.3f | %10.3f | %8.3f | %6.2f | %15.2f | %13.3f | %15.2f | %13.3f | %s |\n",
                r.name.c_str(), r.plan_s * 1e3, r.dispatch_s * 1e3, r.combine_s * 1e3, total * 1e3,
                total / flat_total, m[4 * i], m[4 * i + 1], m[4 * i + 2], m[4 * i + 3], r.note.c_str());
  }
  std::fflush(stdout);
}

void bench(const Options& o, par::Communicator& world) {
  par::ProcessGroups groups(world, {world.size(), o.ranks_per_node});
  const int E = world.size(), me = world.rank();
  if (o.experts % E != 0) sy::throw_usage("--experts {} must be a multiple of the {} ranks", o.experts, E);
  const Routing r = random_routing(o, me, E);
  par::RoutedSlots slots{o.tokens, r.token, r.dest, r.gate, r.tag};
  const par::GroupTopology& topo = groups.exchange_groups().topology;
  const auto be = switchyard::core::make_backend(switchyard::core::Device::cpu);  // packs and sums the rows
  for (int64_t C : o.d_models) {
    slots.row_bytes = C * 4;
    std::vector<float> x(static_cast<size_t>(o.tokens * C));
    std::mt19937 rng(static_cast<unsigned>(me));
    std::uniform_real_distribution<float> u(-1, 1);
    for (float& v : x) v = u(rng);
    std::vector<float> out(x.size());
    std::vector<Row> rows;
    for (auto alg : {par::ExchangeAlgorithm::flat, par::ExchangeAlgorithm::hierarchical,
                     par::ExchangeAlgorithm::automatic}) {
      auto ex = par::make_token_exchange(alg, groups.exchange_groups(), *be);
      Row row;
      row.name = std::string(switchyard::core::name_of(alg));
      row.plan_s = time_median(o, [&] { ex->make_plan(slots); });
      auto plan = ex->make_plan(slots);
      std::vector<float> recv(static_cast<size_t>(plan->num_recv * C));
      row.traffic = par::dispatch_forward(*ex, *plan, x.data(), C, recv.data());
      row.dispatch_s = time_median(o, [&] { par::dispatch_forward(*ex, *plan, x.data(), C, recv.data()); });
      row.combine_s = time_median(o, [&] { par::combine_forward(*ex, *plan, recv.data(), C, out.data()); });
      if (alg == par::ExchangeAlgorithm::automatic) row.note = "chose " + par::describe_plan(*plan);
      rows.push_back(std::move(row));
    }
    // Raw MPI_Alltoallv of the same per-slot rows (counts exchanged once, outside the timing).
    std::vector<int> sc(static_cast<size_t>(E), 0), rc(static_cast<size_t>(E)), sd(static_cast<size_t>(E)),
        rd(static_cast<size_t>(E));
    for (int32_t d : r.dest) sc[d] += static_cast<int>(C);
    SY_MPI_CHECK(MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, MPI_COMM_WORLD));
    for (int q = 1; q < E; ++q) {
      sd[q] = sd[q - 1] + sc[q - 1];
      rd[q] = rd[q - 1] + rc[q - 1];
    }
    std::vector<float> send(r.token.size() * static_cast<size_t>(C)), back(send.size()),
        recv(static_cast<size_t>(rd[E - 1] + rc[E - 1]));
    for (size_t s = 0; s < r.token.size(); ++s)
      std::copy_n(x.begin() + r.token[s] * C, C, send.begin() + static_cast<int64_t>(s) * C);
    Row raw;
    raw.name = "raw Alltoallv";
    raw.note = "per-slot rows, no counts/pack/sum";
    const int my_node = topo.node_of[static_cast<size_t>(me)];
    raw.traffic.algorithm = par::ExchangeAlgorithm::flat;
    for (int q = 0; q < E; ++q) {
      if (q == me || sc[q] == 0) continue;
      par::Traffic& t = topo.node_of[static_cast<size_t>(q)] == my_node ? raw.traffic.intra_node : raw.traffic.inter_node;
      t.messages += 1;
      t.bytes += int64_t{sc[q]} * 4;
    }
    raw.dispatch_s = time_median(o, [&] {
      SY_MPI_CHECK(MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_FLOAT, recv.data(), rc.data(), rd.data(),
                                 MPI_FLOAT, MPI_COMM_WORLD));
    });
    raw.combine_s = time_median(o, [&] {
      SY_MPI_CHECK(MPI_Alltoallv(recv.data(), rc.data(), rd.data(), MPI_FLOAT, back.data(), sc.data(), sd.data(),
                                 MPI_FLOAT, MPI_COMM_WORLD));
    });
    // The same through Communicator::alltoallv (pairwise Isend/Irecv): transport without packing.
    Row comm = raw;
    comm.name = "comm alltoallv";
    comm.note = "Communicator::alltoallv, same buffers";
    auto bytes = [](const std::vector<int>& v) {
      std::vector<int64_t> out(v.begin(), v.end());
      for (auto& b : out) b *= 4;
      return out;
    };
    const auto scb = bytes(sc), sdb = bytes(sd), rcb = bytes(rc), rdb = bytes(rd);
    comm.dispatch_s = time_median(o, [&] { world.alltoallv(send.data(), scb, sdb, recv.data(), rcb, rdb); });
    comm.combine_s = time_median(o, [&] { world.alltoallv(recv.data(), rcb, rdb, back.data(), scb, sdb); });
    rows.push_back(std::move(raw));
    rows.push_back(std::move(comm));
    print_table(me, o, E, C, rows);
  }
}

}  // namespace

int main(int argc, char** argv) {
  par::MpiContext mpi(&argc, &argv);
  try {
    const Options o = parse(argc, argv);
    auto world = par::MpiCommunicator::world();
    bench(o, *world);
  } catch (const sy::Error& e) {
    std::fprintf(stderr, "bench_token_exchange: error (rank %d): %s\n", mpi.rank(), e.what());
    mpi.abort_job(e.exit_code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_token_exchange: error (rank %d): %s\n", mpi.rank(), e.what());
    mpi.abort_job(1);
  }
  return 0;
}
