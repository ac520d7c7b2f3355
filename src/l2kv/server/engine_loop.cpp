#include "l2kv/server/engine_loop.h"

#include <cstdio>
#include <exception>
#include <future>
#include <utility>

#include "l2kv/core/error.h"
#include "l2kv/server/openai_protocol.h"

namespace l2kv::server {

void OutputChannel::push(int32_t choice, RequestOutput output) {
  {
    std::lock_guard lock(mutex_);
    if (output.finished) --unfinished_;
    items_.push_back({choice, std::move(output)});
  }
  ready_.notify_one();
}

bool OutputChannel::pop(std::vector<Item>& items, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (items_.empty() && unfinished_ > 0)
    ready_.wait_for(lock, timeout, [&] { return !items_.empty() || unfinished_ <= 0; });
  while (!items_.empty()) {
    items.push_back(std::move(items_.front()));
    items_.pop_front();
  }
  return unfinished_ <= 0;
}

namespace {

ApiError unavailable(const std::string& failure) {
  return ApiError(503, "The engine cannot serve requests: " + failure, "", "service_unavailable",
                  "engine_failed");
}

}  // namespace

struct EngineLoop::PendingSubmit {
  std::vector<GenerationRequest> requests;
  std::shared_ptr<OutputChannel> channel;
  std::promise<std::vector<int64_t>> ids;
};

EngineLoop::EngineLoop(std::function<std::unique_ptr<Engine>()> make_engine, Metrics* metrics)
    : metrics_(metrics) {
  output_thread_ = std::thread([this] { run_outputs(); });
  std::promise<void> started;
  std::future<void> ready = started.get_future();
  try {
    thread_ = std::thread([this, make = std::move(make_engine), &started]() mutable {
      try {
        engine_ = make();
        config_ = engine_->config();
        vocab_size_ = engine_->runner().config().vocab_size;
        eos_token_ids_ = engine_->eos_token_ids();
        snapshot_.engine = engine_->stats();
      } catch (...) {
        started.set_exception(std::current_exception());
        return;
      }
      started.set_value();
      run();
    });
  } catch (...) {  // no engine thread
    close_outputs();
    throw;
  }
  try {
    ready.get();
  } catch (...) {
    thread_.join();
    close_outputs();
    throw;
  }
}

EngineLoop::~EngineLoop() {
  shutdown();
}

EngineLoop::Submission EngineLoop::submit(std::vector<GenerationRequest> requests,
                                          const Tokenizer* tokenizer) {
  const auto refuse_when_down = [&] {
    if (!failure_.empty()) throw unavailable(failure_);
    if (stopping_) throw ApiError(503, "The server is shutting down.");
  };
  {
    std::lock_guard lock(mutex_);
    refuse_when_down();  // 503 before a 400 for what the request asks
  }
  auto pending = std::make_shared<PendingSubmit>();
  pending->channel =
      std::make_shared<OutputChannel>(static_cast<int32_t>(requests.size()), tokenizer);
  try {
    for (size_t i = 0; i < requests.size(); ++i)
      pending->channel->add_choice(static_cast<int32_t>(i), requests[i].params);
    for (GenerationRequest& r : requests) r.params.stop.clear();  // the output thread's
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "stop");
  }
  pending->requests = std::move(requests);
  std::future<std::vector<int64_t>> ids = pending->ids.get_future();
  {
    std::lock_guard lock(mutex_);
    refuse_when_down();
    submits_.push_back(pending);
  }
  wake_.notify_one();
  return {ids.get(), pending->channel};  // rethrows the engine's refusal as ApiError
}

void EngineLoop::abort(const std::vector<int64_t>& request_ids) {
  {
    std::lock_guard lock(mutex_);
    aborts_.insert(aborts_.end(), request_ids.begin(), request_ids.end());
  }
  wake_.notify_one();
}

std::string EngineLoop::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

LoopSnapshot EngineLoop::snapshot() const {
  std::lock_guard lock(mutex_);
  return snapshot_;
}

void EngineLoop::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  // The engine thread's last outputs (the aborts of what was in flight) are queued: deliver
  // them, then stop.
  close_outputs();
}

void EngineLoop::close_outputs() {
  {
    std::lock_guard lock(outputs_mutex_);
    outputs_closed_ = true;
  }
  outputs_ready_.notify_one();
  if (output_thread_.joinable()) output_thread_.join();
}

void EngineLoop::queue_output(PendingOutput pending) {
  {
    std::lock_guard lock(outputs_mutex_);
    outputs_.push_back(std::move(pending));
  }
  outputs_ready_.notify_one();
}

void EngineLoop::run_outputs() {
  for (;;) {
    std::deque<PendingOutput> batch;
    {
      std::unique_lock lock(outputs_mutex_);
      outputs_ready_.wait(lock, [&] { return outputs_closed_ || !outputs_.empty(); });
      if (outputs_.empty()) return;  // closed and drained
      batch.swap(outputs_);
    }
    for (PendingOutput& p : batch) deliver(p);
  }
}

// The text of one engine output (OutputProcessor), the abort of a request whose text ended it,
// /metrics of what the client gets, then the channel. Nothing of a choice after its final
// output; an exception here ends that choice with an error, not the server.
void EngineLoop::deliver(PendingOutput& p) {
  OutputChannel& channel = *p.channel;
  OutputChannel::ChoiceState& state = channel.choices_[static_cast<size_t>(p.choice)];
  if (state.closed) return;
  RequestOutput& out = p.output;
  try {
    const OutputProcessor::Verdict verdict = channel.text_.process(p.choice, out);
    if (verdict == OutputProcessor::Verdict::kDrop) return;  // after its text ended it
    if (verdict == OutputProcessor::Verdict::kEnded) abort({out.request_id});
  } catch (const std::exception& e) {
    if (!out.finished) abort({out.request_id});
    out.new_tokens.clear();
    out.new_logprobs.clear();
    out.new_text.clear();
    out.finished = true;
    out.finish_reason = FinishReason::kError;
    out.stop_reason.clear();
    out.stop_token_id = -1;
    out.error = std::string("making the output's text failed: ") + e.what();
  }
  state.closed = out.finished;
  if (metrics_) observe(state, p);
  channel.push(p.choice, std::move(out));
}

// Per request, from what its client gets: prompt tokens and time to first token with the first
// output that has tokens, inter-token latency and generated tokens with each, the end and its
// reason with the final one.
void EngineLoop::observe(OutputChannel::ChoiceState& state, const PendingOutput& p) {
  const RequestOutput& out = p.output;
  const auto now = std::chrono::steady_clock::now();
  const auto seconds = [&](auto since) {
    return std::chrono::duration<double>(now - since).count();
  };
  const auto tokens = static_cast<int64_t>(out.new_tokens.size());
  // Its prompt ran once a token came, or once it ended with the prompt computed (a prompt-only
  // echo ends without a token).
  const bool prompt_ran =
      tokens > 0 || (out.finished && out.finish_reason != FinishReason::kError &&
                     out.finish_reason != FinishReason::kAbort);
  if (state.first && prompt_ran && p.counts_prompt) metrics_->add_prompt_tokens(out.prompt_tokens);
  if (tokens > 0) {
    if (state.first) {
      metrics_->observe_time_to_first_token(seconds(p.arrival));
      if (tokens > 1) metrics_->observe_inter_token_latency(0.0, tokens - 1);  // several at once
      state.first = false;
    } else {
      metrics_->observe_inter_token_latency(seconds(state.last_token) / static_cast<double>(tokens),
                                            tokens);
    }
    state.last_token = now;
    metrics_->add_generation_tokens(tokens);
  }
  if (out.finished)
    metrics_->observe_request_finished(finish_reason_name(out.finish_reason), seconds(p.arrival));
}

void EngineLoop::on_output(const std::shared_ptr<OutputChannel>& channel, int32_t choice,
                           const RequestOutput& output) {
  const auto it = in_flight_.find(output.request_id);
  if (it == in_flight_.end()) return;  // of a group refused while it was added: nobody reads it
  const auto arrival = it->second.arrival;
  const bool counts_prompt = it->second.counts_prompt;
  if (output.finished) in_flight_.erase(it);
  if (output.finish_reason == FinishReason::kError && !engine_->failure().empty()) {
    // The device was lost in this step: unavailable before its requests hear of it.
    std::lock_guard lock(mutex_);
    failure_ = engine_->failure();
  }
  // Its text and /metrics on the output thread.
  queue_output({channel, choice, output, arrival, counts_prompt});
}

void EngineLoop::add_group(PendingSubmit& pending) {
  std::vector<int64_t> ids;
  const auto arrival = std::chrono::steady_clock::now();
  // n > 1: the choices of one prompt come one after another; each shares the prefill of the
  // first (the engine checks the prompts are the same).
  std::vector<size_t> leaders(pending.requests.size());
  for (size_t i = 0; i < leaders.size(); ++i)
    leaders[i] =
        i > 0 && pending.requests[i].prompt == pending.requests[i - 1].prompt ? leaders[i - 1] : i;
  try {
    for (size_t i = 0; i < pending.requests.size(); ++i) {
      GenerationRequest& r = pending.requests[i];
      r.on_output = [this, channel = pending.channel, choice = static_cast<int32_t>(i)](
                        const RequestOutput& out) { on_output(channel, choice, out); };
      if (leaders[i] != i) r.share_prompt_with = ids[leaders[i]];
      const int64_t id = engine_->add_request(std::move(r));
      in_flight_[id] = InFlight{pending.channel, static_cast<int32_t>(i), arrival, leaders[i] == i};
      ids.push_back(id);
    }
  } catch (const Error& e) {
    for (int64_t id : ids) {
      in_flight_.erase(id);
      engine_->abort(id);
    }
    pending.ids.set_exception(std::make_exception_ptr(ApiError(400, e.what())));
    return;
  } catch (...) {
    for (int64_t id : ids) {
      in_flight_.erase(id);
      engine_->abort(id);
    }
    pending.ids.set_exception(std::current_exception());
    return;
  }
  pending.ids.set_value(std::move(ids));
}

void EngineLoop::run() {
  try {
    serve();
  } catch (const std::exception& e) {
    fail(std::string("the engine thread stopped: ") + e.what());
  } catch (...) {
    fail("the engine thread stopped on an unknown exception");
  }
  engine_.reset();
}

// After the engine failed: nothing more is accepted, every submission waiting and every
// request in flight ends with the reason. The engine is not touched (its state may be unknown).
void EngineLoop::fail(const std::string& reason) {
  std::fprintf(stderr, "l2kv: the engine cannot serve requests: %s\n", reason.c_str());
  std::deque<std::shared_ptr<PendingSubmit>> submits;
  {
    std::lock_guard lock(mutex_);
    failure_ = reason;
    submits.swap(submits_);
    aborts_.clear();
  }
  for (auto& pending : submits)
    pending->ids.set_exception(std::make_exception_ptr(unavailable(reason)));
  std::unordered_map<int64_t, InFlight> in_flight;
  in_flight.swap(in_flight_);
  for (auto& [id, request] : in_flight) {
    RequestOutput out;
    out.request_id = id;
    out.finished = true;
    out.finish_reason = FinishReason::kError;
    out.error = reason;
    queue_output({request.channel, request.choice, std::move(out), request.arrival});
  }
  std::lock_guard lock(mutex_);
  snapshot_.requests_in_flight = 0;
}

void EngineLoop::serve() {
  for (;;) {
    std::deque<std::shared_ptr<PendingSubmit>> submits;
    std::vector<int64_t> aborts;
    bool stopping = false;
    {
      std::unique_lock lock(mutex_);
      if (!engine_->has_unfinished())
        wake_.wait(lock, [&] { return stopping_ || !submits_.empty() || !aborts_.empty(); });
      submits.swap(submits_);
      aborts.swap(aborts_);
      stopping = stopping_;
    }
    for (auto& pending : submits) {
      if (stopping)
        pending->ids.set_exception(
            std::make_exception_ptr(ApiError(503, "The server is shutting down.")));
      else
        add_group(*pending);
    }
    for (int64_t id : aborts) engine_->abort(id);
    if (stopping) {
      // Abort everything in flight: each channel gets its finished output.
      std::vector<int64_t> ids;
      for (const auto& [id, request] : in_flight_) ids.push_back(id);
      for (int64_t id : ids) engine_->abort(id);
    } else {
      // A step fails its own requests when the runner fails; an exception out of it leaves the
      // engine's state unknown, and run() ends the loop.
      engine_->step();
    }
    {
      std::lock_guard lock(mutex_);
      snapshot_.engine = engine_->stats();
      snapshot_.requests_in_flight = static_cast<int64_t>(in_flight_.size());
      if (stopping && submits_.empty()) break;
    }
    if (!engine_->failure().empty()) {
      fail(engine_->failure());  // its requests have ended already, their blocks are free
      return;
    }
  }
}

}  // namespace l2kv::server
