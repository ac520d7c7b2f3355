// One thread owns the Engine and drives its steps; HTTP threads talk to it through a command
// queue (submit, abort) and read each request's outputs from a thread-safe channel, as
// llama.cpp's server does with its task queue and response reader.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "l2kv/engine/engine.h"
#include "l2kv/server/metrics.h"

namespace l2kv::server {

// The outputs of a group of engine requests (the choices of one API request), each tagged with
// its choice index. Written by the engine thread, read by one HTTP thread.
class OutputChannel {
 public:
  explicit OutputChannel(int32_t choices) : unfinished_(choices) {}

  struct Item {
    int32_t choice = 0;
    RequestOutput output;
  };

  void push(int32_t choice, const RequestOutput& output);
  // Moves what has arrived into `items`, waiting up to `timeout` when nothing has. Returns true
  // once every choice has finished and everything was taken.
  bool pop(std::vector<Item>& items, std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Item> items_;
  int32_t unfinished_;
};

// Load and counters for /metrics, copied under a lock after every loop turn.
struct LoopSnapshot {
  EngineStats engine;
  int64_t requests_in_flight = 0;
};

class EngineLoop {
 public:
  // Runs `make_engine` on the engine thread (so a CUDA context is current there) and starts
  // stepping. Rethrows what `make_engine` throws.
  EngineLoop(std::function<std::unique_ptr<Engine>()> make_engine, Metrics* metrics);
  ~EngineLoop();  // shutdown()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  struct Submission {
    std::vector<int64_t> request_ids;  // one per choice
    std::shared_ptr<OutputChannel> channel;
  };

  // Queues the requests (their on_output is replaced) and waits until the engine thread has
  // added them: all or none. Throws ApiError 400 with the engine's message when it refuses
  // one (l2kv::Error), 503 after shutdown or once the engine has failed (see failure()).
  Submission submit(std::vector<GenerationRequest> requests);

  // Aborts requests from any thread: queued for the engine thread, which frees their blocks at
  // once; their channels get a finished output with FinishReason::kAbort.
  void abort(const std::vector<int64_t>& request_ids);

  // Why no request can be served any more, empty while the engine serves: the engine thread
  // stopped on an exception (its state is unknown), or the engine reported its device lost.
  // Requests in flight then end with FinishReason::kError and this reason.
  std::string failure() const;

  LoopSnapshot snapshot() const;
  const EngineConfig& config() const { return config_; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<int32_t>& eos_token_ids() const { return eos_token_ids_; }

  // Stops accepting submissions, aborts every request in flight, joins the thread. Idempotent.
  void shutdown();

 private:
  struct PendingSubmit;
  void run();
  void serve();
  void fail(const std::string& reason);
  void add_group(PendingSubmit& pending);
  void on_output(const std::shared_ptr<OutputChannel>& channel, int32_t choice,
                 const RequestOutput& output);

  Metrics* metrics_;
  std::unique_ptr<Engine> engine_;  // touched by the engine thread only (after start-up)
  EngineConfig config_;
  int64_t vocab_size_ = 0;
  std::vector<int32_t> eos_token_ids_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<PendingSubmit>> submits_;
  std::vector<int64_t> aborts_;
  bool stopping_ = false;
  std::string failure_;
  LoopSnapshot snapshot_;

  // Engine thread only: each request in flight, its channel and its timing for the latency
  // histograms.
  struct InFlight {
    std::shared_ptr<OutputChannel> channel;
    int32_t choice = 0;
    std::chrono::steady_clock::time_point arrival, last_token;
    bool first = true;
  };
  std::unordered_map<int64_t, InFlight> in_flight_;

  std::thread thread_;
};

}  // namespace l2kv::server
