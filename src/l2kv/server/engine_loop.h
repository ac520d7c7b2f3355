// One thread owns the Engine and drives its steps; HTTP threads talk to it through a command
// queue (submit, abort) and read each request's outputs from a thread-safe channel, as
// llama.cpp's server does with its task queue and response reader. The engine thread handles
// token ids only: the reading HTTP thread makes the text and applies stop strings
// (OutputProcessor), and aborts a request whose text met one.
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
#include "l2kv/engine/output_processor.h"
#include "l2kv/server/metrics.h"

namespace l2kv::server {

// The outputs of a group of engine requests (the choices of one API request), each tagged with
// its choice index. Written by the engine thread (token ids), read by one HTTP thread, which
// makes their text on the way out.
class OutputChannel {
 public:
  // `tokenizer` (may be null: no text) must outlive the channel. `end_requests` is called from
  // the reading thread with the engine requests whose text met a stop string (or a token the
  // tokenizer cannot decode): their outputs have ended, the engine's requests may run on.
  OutputChannel(int32_t choices, const Tokenizer* tokenizer,
                std::function<void(const std::vector<int64_t>&)> end_requests);

  struct Item {
    int32_t choice = 0;
    RequestOutput output;
  };

  // Choice `choice`'s stop strings and text options; before its outputs are read. Throws
  // l2kv::Error for stop strings the channel cannot apply (empty ones, or no tokenizer).
  void add_choice(int32_t choice, const SamplingParams& params);

  void push(int32_t choice, const RequestOutput& output);  // the engine thread
  // Moves what has arrived into `items`, with its text (OutputProcessor: new_text filled, stop
  // strings applied, what a request produced after its stop dropped), waiting up to `timeout`
  // when nothing has. Returns true once every choice has ended and its final output was taken.
  bool pop(std::vector<Item>& items, std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Item> items_;
  int32_t unfinished_;  // choices the engine has not finished
  // The reading thread's: each choice's text, and the choices whose final output it took.
  OutputProcessor text_;
  int32_t choices_;
  int32_t ended_ = 0;
  std::function<void(const std::vector<int64_t>&)> end_requests_;
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
  // added them: all or none. `tokenizer` (may be null) makes the choices' text on the reading
  // side. Throws ApiError 400 for stop strings the text cannot apply or with the engine's
  // message when it refuses one (l2kv::Error), 503 after shutdown or once the engine has
  // failed (see failure()).
  Submission submit(std::vector<GenerationRequest> requests, const Tokenizer* tokenizer);

  // Aborts requests from any thread: queued for the engine thread, which frees their blocks at
  // once; their channels get a finished output with FinishReason::kAbort.
  void abort(const std::vector<int64_t>& request_ids);
  // Ends requests whose text met a stop string (OutputChannel's end_requests): aborted as
  // abort() does, counted in the metrics as finished with "stop".
  void end_stopped(const std::vector<int64_t>& request_ids);

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
  std::vector<int64_t> stopped_;  // end_stopped()'s, aborted like aborts_
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
  bool aborting_stopped_ = false;  // engine thread: the abort in progress is end_stopped()'s

  std::thread thread_;
};

}  // namespace l2kv::server
