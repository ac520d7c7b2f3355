// One thread owns the Engine and drives its steps; HTTP threads talk to it through a command
// queue (submit, abort) and read each request's outputs from a thread-safe channel, as
// llama.cpp's server does with its task queue and response reader. The engine thread handles
// token ids only; an output thread between it and the channels (vLLM's output handler) makes
// each request's text and applies its stop strings (OutputProcessor), aborts a request whose
// text met one, and counts each request's end in /metrics with the reason its client sees.
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

class EngineLoop;

// The outputs of a group of engine requests (the choices of one API request), each tagged with
// its choice index, with their text. Written by the loop's output thread, read by one HTTP
// thread.
class OutputChannel {
 public:
  // `tokenizer` (may be null: no text) must outlive the channel, which the loop may hold until
  // its requests have ended in the engine (after the HTTP request is answered).
  OutputChannel(int32_t choices, const Tokenizer* tokenizer)
      : unfinished_(choices), text_(tokenizer), choices_(static_cast<size_t>(choices)) {}

  struct Item {
    int32_t choice = 0;
    RequestOutput output;
  };

  // Choice `choice`'s stop strings and text options, before the group is submitted. Throws
  // l2kv::Error for stop strings the channel cannot apply (empty ones, or no tokenizer).
  void add_choice(int32_t choice, const SamplingParams& params) { text_.add(choice, params); }

  // Moves what has arrived into `items`, waiting up to `timeout` when nothing has. Returns true
  // once every choice has ended and everything was taken.
  bool pop(std::vector<Item>& items, std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Item> items_;
  int32_t unfinished_;

  // The loop's output thread's alone once the group is submitted: the choices' text, and each
  // choice's timing for /metrics and whether its final output went out.
  friend class EngineLoop;
  struct ChoiceState {
    bool first = true, closed = false;
    std::chrono::steady_clock::time_point last_token;
  };
  void push(int32_t choice, RequestOutput output);
  OutputProcessor text_;
  std::vector<ChoiceState> choices_;
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
  // added them: all or none. `tokenizer` (may be null; it must outlive the loop's use of the
  // channel) makes the choices' text on the output thread. Throws ApiError 400 for stop strings the
  // text cannot apply or with the engine's message when it refuses one (l2kv::Error), 503 after
  // shutdown or once the engine has failed (see failure()).
  Submission submit(std::vector<GenerationRequest> requests, const Tokenizer* tokenizer);

  // Aborts requests from any thread: queued for the engine thread, which frees their blocks at
  // once; their channels get a finished output with FinishReason::kAbort (unless their text
  // ended them first).
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
  // An engine output on its way to the output thread, which runs it through its channel's
  // text, records what the client gets in /metrics, then gives it to the channel.
  struct PendingOutput {
    std::shared_ptr<OutputChannel> channel;
    int32_t choice = 0;
    RequestOutput output;
    std::chrono::steady_clock::time_point arrival;  // of its request, for /metrics
    bool counts_prompt = true;  // false for a choice that shares another's prompt (n > 1)
  };
  void queue_output(PendingOutput pending);
  void close_outputs();  // the output thread delivers what is queued, then ends
  void run_outputs();
  void deliver(PendingOutput& pending);
  void observe(OutputChannel::ChoiceState& state, const PendingOutput& delivered);

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
    std::chrono::steady_clock::time_point arrival;
    bool counts_prompt = true;  // its prompt counts in /metrics (once for n choices, as vLLM)
  };
  std::unordered_map<int64_t, InFlight> in_flight_;

  std::thread thread_;

  // Engine outputs on their way to the output thread (token ids, no text yet).
  std::mutex outputs_mutex_;
  std::condition_variable outputs_ready_;
  std::deque<PendingOutput> outputs_;
  bool outputs_closed_ = false;
  std::thread output_thread_;
};

}  // namespace l2kv::server
