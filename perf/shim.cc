/*
 * perf/shim.cc - perf/bench.h over Google Benchmark 1.7.1; the project's only C++ file.
 *
 * What it owns:
 *  - the table of registered benchmarks. Google Benchmark's setup and teardown hooks are
 *    plain function pointers without user data, so each table slot gets its own pair of
 *    hook functions, instantiated from a template (hence the fixed table size);
 *  - struct mvb_state, the per-thread handle handed to C: the Google Benchmark state and
 *    the iterations handed out so far. Tracking them lets every batch be sized to what is
 *    left, so the iteration count is exact and no batch overshoots;
 *  - the recording reporter: it forwards everything to the display reporter Google
 *    Benchmark would have used (--benchmark_format decides) and keeps, per benchmark and
 *    thread count, the items per second that perf/main.c turns into ratios (the median
 *    of the repetitions when --benchmark_repetitions asks for several).
 *
 * Invariant kept for Google Benchmark: every thread of a run starts and finishes its
 * keep-running loop exactly once, whatever the C callback did, because the start and the
 * end of the loop are barriers across the run's threads. A callback that returns early is
 * turned into a skipped run rather than a hang or an abort.
 */
#include "bench.h"

#include <benchmark/benchmark.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

struct mvb_state {
    benchmark::State *gb;
    int64_t handed;  /* iterations handed out by mvb_keep_running_batch */
    bool finished;   /* mvb_keep_running_batch returned false */
};

namespace {

/* Largest batch; big enough to amortize the call, small enough to stay near the budget. */
constexpr int64_t kMaxBatch = 1024;
constexpr size_t kMaxBenchmarks = 128;

struct Entry {
    std::string name;
    mvb_run_fn run = nullptr;
    void *user = nullptr;
    mvb_setup_fn setup = nullptr;
    mvb_teardown_fn teardown = nullptr;
    int setup_rc = 0; /* of the current run; written before its threads start */
};

std::array<Entry, kMaxBenchmarks> g_entries;
size_t g_nr_entries;
std::atomic<size_t> g_failures{0};
void (*g_help)(void);

/* ---- Per-slot hooks ---------------------------------------------------------------------- */

void call_setup(size_t idx, const benchmark::State &s)
{
    Entry &e = g_entries[idx];
    e.setup_rc = e.setup ? e.setup(e.user, s.threads()) : 0;
}

void call_teardown(size_t idx, const benchmark::State &s)
{
    Entry &e = g_entries[idx];
    if (e.teardown)
        e.teardown(e.user, s.threads());
}

using Hook = void (*)(const benchmark::State &);

template <size_t I> void setup_hook(const benchmark::State &s) { call_setup(I, s); }
template <size_t I> void teardown_hook(const benchmark::State &s) { call_teardown(I, s); }

template <size_t... I>
constexpr std::array<Hook, sizeof...(I)> setup_hooks(std::index_sequence<I...>)
{
    return {{&setup_hook<I>...}};
}

template <size_t... I>
constexpr std::array<Hook, sizeof...(I)> teardown_hooks(std::index_sequence<I...>)
{
    return {{&teardown_hook<I>...}};
}

constexpr auto kSetupHooks = setup_hooks(std::make_index_sequence<kMaxBenchmarks>{});
constexpr auto kTeardownHooks = teardown_hooks(std::make_index_sequence<kMaxBenchmarks>{});

/* ---- One thread of one run --------------------------------------------------------------- */

void run_thread(size_t idx, benchmark::State &s)
{
    const Entry &e = g_entries[idx];
    mvb_state st{&s, 0, false};

    if (e.setup_rc != 0) {
        std::string msg = "setup failed (" + std::to_string(e.setup_rc) + ")";
        s.SkipWithError(msg.c_str());
    } else {
        e.run(&st, e.user);
    }
    if (!st.finished) {
        /* Returned before the loop ended: report it, and pass the loop's barriers. */
        if (!s.error_occurred())
            s.SkipWithError("run callback returned before its loop ended");
        while (s.KeepRunningBatch(1)) {
        }
    }
}

/* ---- Recording reporter ------------------------------------------------------------------ */

struct Recorded {
    std::string run_name;
    double items_per_second = 0;
    double real_ns = 0;
    bool is_median = false;
    bool failed = false;
};

std::map<std::pair<std::string, int>, Recorded> g_results;

class Recorder final : public benchmark::BenchmarkReporter {
public:
    explicit Recorder(benchmark::BenchmarkReporter &display) : display_(display)
    {
        SetOutputStream(&display.GetOutputStream());
        SetErrorStream(&display.GetErrorStream());
    }

    bool ReportContext(const Context &context) override
    {
        return display_.ReportContext(context);
    }

    void ReportRuns(const std::vector<Run> &runs) override
    {
        for (const Run &r : runs)
            record(r);
        display_.ReportRuns(runs);
    }

    void Finalize() override { display_.Finalize(); }

private:
    static void record(const Run &r)
    {
        Recorded &out = g_results[{r.run_name.function_name, static_cast<int>(r.threads)}];
        if (r.error_occurred) {
            g_failures.fetch_add(1, std::memory_order_relaxed);
            out.failed = true;
            return;
        }
        bool is_median = r.run_type == Run::RT_Aggregate;
        if ((is_median && r.aggregate_name != "median") || (out.is_median && !is_median))
            return;
        out.run_name = r.benchmark_name();
        auto it = r.counters.find("items_per_second");
        out.items_per_second = it == r.counters.end() ? 0.0 : it->second.value;
        out.real_ns = r.iterations > 0
            ? r.real_accumulated_time * 1e9 / static_cast<double>(r.iterations) : 0.0;
        out.is_median = is_median;
    }

    benchmark::BenchmarkReporter &display_;
};

void print_help()
{
    benchmark::PrintDefaultHelp();
    if (g_help)
        g_help();
}

} // namespace

/* ---- Registration ------------------------------------------------------------------------ */

extern "C" int mvb_register(const struct mvb_bench *b)
{
    if (!b || !b->name || !b->name[0] || !b->run || g_nr_entries == kMaxBenchmarks)
        return -1;
    if ((b->flags & MVB_REAL_TIME) && (b->flags & MVB_MANUAL_TIME))
        return -1;
    for (int t : b->threads)
        if (t < 0)
            return -1;

    size_t idx = g_nr_entries++;
    Entry &e = g_entries[idx];
    e.name = b->name;
    e.run = b->run;
    e.user = b->user;
    e.setup = b->setup;
    e.teardown = b->teardown;

    benchmark::internal::Benchmark *gb = benchmark::RegisterBenchmark(
        e.name.c_str(), [idx](benchmark::State &s) { run_thread(idx, s); });
    for (int t : b->threads) {
        if (t == 0)
            break;
        gb->Threads(t);
    }
    if (b->flags & MVB_REAL_TIME)
        gb->UseRealTime();
    if (b->flags & MVB_MANUAL_TIME)
        gb->UseManualTime();
    if (e.setup)
        gb->Setup(kSetupHooks[idx]);
    if (e.teardown)
        gb->Teardown(kTeardownHooks[idx]);
    return 0;
}

/* ---- Inside a run ------------------------------------------------------------------------ */

extern "C" bool mvb_keep_running_batch(mvb_state_t *st, uint64_t *n)
{
    if (st->finished) {
        *n = 0;
        return false;
    }
    int64_t left = st->gb->max_iterations - st->handed;
    int64_t batch = left < kMaxBatch ? left : kMaxBatch;
    /* With nothing left, a batch of one makes Google Benchmark end the loop. */
    if (batch < 1)
        batch = 1;
    if (!st->gb->KeepRunningBatch(batch)) {
        st->finished = true;
        *n = 0;
        return false;
    }
    st->handed += batch;
    *n = static_cast<uint64_t>(batch);
    return true;
}

extern "C" uint64_t mvb_iterations(const mvb_state_t *st)
{
    return static_cast<uint64_t>(st->handed);
}

extern "C" void mvb_set_items_processed(mvb_state_t *st, uint64_t items)
{
    st->gb->SetItemsProcessed(static_cast<int64_t>(items));
}

extern "C" void mvb_counter(mvb_state_t *st, const char *name, double value, unsigned flags)
{
    auto f = benchmark::Counter::kDefaults;
    if (flags & MVB_COUNTER_RATE)
        f = f | benchmark::Counter::kIsRate;
    if (flags & MVB_COUNTER_PER_ITERATION)
        f = f | benchmark::Counter::kAvgIterations;
    if (flags & MVB_COUNTER_PER_THREAD)
        f = f | benchmark::Counter::kAvgThreads;
    auto k = (flags & MVB_COUNTER_BINARY) ? benchmark::Counter::kIs1024
                                          : benchmark::Counter::kIs1000;
    st->gb->counters[name] = benchmark::Counter(value, f, k);
}

extern "C" void mvb_add_manual_time(mvb_state_t *st, double seconds)
{
    st->gb->SetIterationTime(seconds);
}

extern "C" void mvb_skip_with_error(mvb_state_t *st, const char *msg)
{
    st->gb->SkipWithError(msg ? msg : "error");
}

extern "C" bool mvb_error_occurred(const mvb_state_t *st)
{
    return st->gb->error_occurred();
}

extern "C" int mvb_thread_index(const mvb_state_t *st)
{
    return st->gb->thread_index();
}

extern "C" int mvb_threads(const mvb_state_t *st)
{
    return st->gb->threads();
}

extern "C" void mvb_pause_timing(mvb_state_t *st)
{
    st->gb->PauseTiming();
}

extern "C" void mvb_resume_timing(mvb_state_t *st)
{
    st->gb->ResumeTiming();
}

extern "C" void mvb_report_failure(const char *bench, const char *msg)
{
    g_failures.fetch_add(1, std::memory_order_relaxed);
    std::fflush(stdout);
    std::fprintf(stderr, "memvirt-bench: %s: %s\n", bench ? bench : "?", msg ? msg : "failure");
}

/* ---- Running ----------------------------------------------------------------------------- */

extern "C" int mvb_run(int argc, char **argv, void (*help)(void), struct mvb_run_info *info)
{
    g_help = help;
    benchmark::Initialize(&argc, argv, print_help);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 2;

    /* What Google Benchmark would display by itself; ours to delete, as it would. */
    std::unique_ptr<benchmark::BenchmarkReporter> display(
        benchmark::CreateDefaultDisplayReporter());
    Recorder recorder(*display);
    size_t matched = benchmark::RunSpecifiedBenchmarks(&recorder);
    bool console = dynamic_cast<benchmark::ConsoleReporter *>(display.get()) != nullptr;
    benchmark::Shutdown();
    display->GetOutputStream().flush();
    display->GetErrorStream().flush();

    if (info) {
        info->matched = matched;
        info->failed = g_failures.load(std::memory_order_relaxed);
        info->console = console;
    }
    return 0;
}

extern "C" bool mvb_result(const char *name, int threads, struct mvb_result *out)
{
    auto it = g_results.find({name, threads});
    if (it == g_results.end() || it->second.failed)
        return false;
    out->run_name = it->second.run_name.c_str();
    out->items_per_second = it->second.items_per_second;
    out->real_ns = it->second.real_ns;
    return true;
}
