#include "l2kv/server/engine_loop.h"

#include <cstdio>
#include <exception>
#include <future>
#include <utility>

#include "l2kv/core/error.h"
#include "l2kv/server/openai_protocol.h"

namespace l2kv::server {

OutputChannel::OutputChannel(int32_t choices, const Tokenizer* tokenizer,
                             std::function<void(const std::vector<int64_t>&)> end_requests)
    : unfinished_(choices),
      text_(tokenizer),
      choices_(choices),
      end_requests_(std::move(end_requests)) {}

void OutputChannel::add_choice(int32_t choice, const SamplingParams& params) {
  text_.add(choice, params);
}

void OutputChannel::push(int32_t choice, const RequestOutput& output) {
  {
    std::lock_guard lock(mutex_);
    items_.push_back({choice, output});
    if (output.finished) --unfinished_;
  }
  ready_.notify_one();
}

bool OutputChannel::pop(std::vector<Item>& items, std::chrono::milliseconds timeout) {
  std::deque<Item> arrived;
  {
    std::unique_lock lock(mutex_);
    if (items_.empty() && unfinished_ > 0 && ended_ < choices_)
      ready_.wait_for(lock, timeout, [&] { return !items_.empty() || unfinished_ <= 0; });
    arrived.swap(items_);
  }
  // The text is made here, on the reading thread, outside the lock.
  std::vector<int64_t> stopped;
  for (Item& item : arrived) {
    switch (text_.process(item.choice, item.output)) {
      case OutputProcessor::Verdict::kDrop:
        continue;
      case OutputProcessor::Verdict::kEnded:
        stopped.push_back(item.output.request_id);
        break;
      case OutputProcessor::Verdict::kDeliver:
        break;
    }
    if (item.output.finished) ++ended_;
    items.push_back(std::move(item));
  }
  if (!stopped.empty() && end_requests_) end_requests_(stopped);
  return ended_ >= choices_;
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
  std::promise<void> started;
  std::future<void> ready = started.get_future();
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
  try {
    ready.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

EngineLoop::~EngineLoop() {
  shutdown();
}

EngineLoop::Submission EngineLoop::submit(std::vector<GenerationRequest> requests,
                                          const Tokenizer* tokenizer) {
  auto pending = std::make_shared<PendingSubmit>();
  pending->channel = std::make_shared<OutputChannel>(
      static_cast<int32_t>(requests.size()), tokenizer,
      [this](const std::vector<int64_t>& ids) { end_stopped(ids); });
  try {
    for (size_t i = 0; i < requests.size(); ++i)
      pending->channel->add_choice(static_cast<int32_t>(i), requests[i].params);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "stop");
  }
  pending->requests = std::move(requests);
  std::future<std::vector<int64_t>> ids = pending->ids.get_future();
  {
    std::lock_guard lock(mutex_);
    if (!failure_.empty()) throw unavailable(failure_);
    if (stopping_) throw ApiError(503, "The server is shutting down.");
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

void EngineLoop::end_stopped(const std::vector<int64_t>& request_ids) {
  {
    std::lock_guard lock(mutex_);
    stopped_.insert(stopped_.end(), request_ids.begin(), request_ids.end());
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
}

void EngineLoop::on_output(const std::shared_ptr<OutputChannel>& channel, int32_t choice,
                           const RequestOutput& output) {
  const auto now = std::chrono::steady_clock::now();
  auto it = in_flight_.find(output.request_id);
  if (it != in_flight_.end() && metrics_) {
    InFlight& t = it->second;
    const auto tokens = static_cast<int64_t>(output.new_tokens.size());
    if (tokens > 0) {
      if (t.first) {
        metrics_->add_prompt_tokens(output.prompt_tokens);
        metrics_->observe_time_to_first_token(
            std::chrono::duration<double>(now - t.arrival).count());
        if (tokens > 1) metrics_->observe_inter_token_latency(0.0, tokens - 1);  // several at once
        t.first = false;
      } else {
        metrics_->observe_inter_token_latency(
            std::chrono::duration<double>(now - t.last_token).count() / static_cast<double>(tokens),
            tokens);
      }
      t.last_token = now;
      metrics_->add_generation_tokens(tokens);
    }
    if (output.finished)  // a request its reader stopped (a stop string) counts as "stop"
      metrics_->observe_request_finished(
          finish_reason_name(aborting_stopped_ ? FinishReason::kStop : output.finish_reason),
          std::chrono::duration<double>(now - t.arrival).count());
  }
  if (output.finished) in_flight_.erase(output.request_id);
  if (output.finish_reason == FinishReason::kError && !engine_->failure().empty()) {
    // The device was lost in this step: unavailable before its requests hear of it.
    std::lock_guard lock(mutex_);
    failure_ = engine_->failure();
  }
  channel->push(choice, output);
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
      in_flight_[id] = InFlight{pending.channel, static_cast<int32_t>(i), arrival, arrival, true};
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
    stopped_.clear();
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
    if (metrics_)
      metrics_->observe_request_finished(
          finish_reason_name(FinishReason::kError),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - request.arrival)
              .count());
    request.channel->push(request.choice, out);
  }
  std::lock_guard lock(mutex_);
  snapshot_.requests_in_flight = 0;
}

void EngineLoop::serve() {
  for (;;) {
    std::deque<std::shared_ptr<PendingSubmit>> submits;
    std::vector<int64_t> aborts, stopped;
    bool stopping = false;
    {
      std::unique_lock lock(mutex_);
      if (!engine_->has_unfinished())
        wake_.wait(lock, [&] {
          return stopping_ || !submits_.empty() || !aborts_.empty() || !stopped_.empty();
        });
      submits.swap(submits_);
      aborts.swap(aborts_);
      stopped.swap(stopped_);
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
    aborting_stopped_ = true;  // on_output runs inside abort()
    for (int64_t id : stopped) engine_->abort(id);
    aborting_stopped_ = false;
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
