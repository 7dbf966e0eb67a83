// A minimal CmdStan-style driver for the peer benchmark: one NUTS chain of a Stan program, with the dense or the
// diagonal Euclidean metric, through the same stan::services functions CmdStan calls.
//
// Why: PyStan 3 (httpstan) exposes only stan::services::sample::hmc_nuts_diag_e_adapt, and CmdStan cannot be
// installed offline here; httpstan's wheel ships the Stan, Stan Math, Sundials and TBB headers and libraries and the
// stanc compiler, which is all a CmdStan-like executable needs. benchmarks/stan/cmdstan_lite.py translates the
// program with stanc, compiles it with this file and runs the chains as parallel processes (as CmdStan users do).
//
// usage: nuts_driver METRIC DATA.json INIT.json OUT.csv SEED CHAIN WARMUP SAMPLES DELTA MAX_DEPTH REFRESH
//   METRIC: dense | diag. Stan's defaults otherwise (step size 1, jitter 0, gamma 0.05, kappa 0.75, t0 10,
//   adaptation windows 75 / 50 / 25), warm-up draws saved so that every leapfrog step is counted. The chain starts
//   at INIT (init radius 0 for the parameters INIT names). The CSV is CmdStan's: comment lines with '#', a header,
//   one row per iteration, the adapted metric and the elapsed times as comments.
#include <stan/callbacks/interrupt.hpp>
#include <stan/callbacks/stream_logger.hpp>
#include <stan/callbacks/stream_writer.hpp>
#include <stan/callbacks/writer.hpp>
#include <stan/io/json/json_data.hpp>
#include <stan/model/model_base.hpp>
#include <stan/services/sample/hmc_nuts_dense_e_adapt.hpp>
#include <stan/services/sample/hmc_nuts_diag_e_adapt.hpp>

#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>

stan::model::model_base& new_model(stan::io::var_context& data_context, unsigned int seed,
                                   std::ostream* msg_stream);

int main(int argc, char* argv[]) {
  if (argc != 12) {
    std::cerr << "usage: " << argv[0]
              << " dense|diag DATA.json INIT.json OUT.csv SEED CHAIN WARMUP SAMPLES DELTA MAX_DEPTH REFRESH\n";
    return 2;
  }
  const std::string metric(argv[1]);
  if (metric != "dense" && metric != "diag") {
    std::cerr << "metric must be dense or diag, not " << metric << "\n";
    return 2;
  }
  std::ifstream data_stream(argv[2]);
  std::ifstream init_stream(argv[3]);
  if (!data_stream || !init_stream) {
    std::cerr << "cannot read " << (!data_stream ? argv[2] : argv[3]) << "\n";
    return 2;
  }
  stan::json::json_data data(data_stream);
  stan::json::json_data init(init_stream);
  std::ofstream out(argv[4]);
  out << std::setprecision(15);
  const unsigned int seed = std::stoul(argv[5]);
  const unsigned int chain = std::stoul(argv[6]);
  const int warmup = std::stoi(argv[7]);
  const int samples = std::stoi(argv[8]);
  const double delta = std::stod(argv[9]);
  const int max_depth = std::stoi(argv[10]);
  const int refresh = std::stoi(argv[11]);

  stan::callbacks::stream_writer sample_writer(out, "# ");
  stan::callbacks::writer init_writer;       // discards
  stan::callbacks::writer diagnostic_writer;  // discards
  stan::callbacks::stream_logger logger(std::cout, std::cout, std::cerr, std::cerr, std::cerr);
  stan::callbacks::interrupt interrupt;
  stan::model::model_base& model = new_model(data, seed, &std::cerr);

  const double init_radius = 0, stepsize = 1, jitter = 0, gamma = 0.05, kappa = 0.75, t0 = 10;
  const unsigned int init_buffer = 75, term_buffer = 50, window = 25;
  int rc;
  if (metric == "dense") {
    rc = stan::services::sample::hmc_nuts_dense_e_adapt(
        model, init, seed, chain, init_radius, warmup, samples, 1, true, refresh, stepsize, jitter, max_depth,
        delta, gamma, kappa, t0, init_buffer, term_buffer, window, interrupt, logger, init_writer, sample_writer,
        diagnostic_writer);
  } else {
    rc = stan::services::sample::hmc_nuts_diag_e_adapt(
        model, init, seed, chain, init_radius, warmup, samples, 1, true, refresh, stepsize, jitter, max_depth,
        delta, gamma, kappa, t0, init_buffer, term_buffer, window, interrupt, logger, init_writer, sample_writer,
        diagnostic_writer);
  }
  out.flush();
  return rc;
}
