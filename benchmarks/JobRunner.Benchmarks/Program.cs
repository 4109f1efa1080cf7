using BenchmarkDotNet.Running;

// Run all:            dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*'
// Run one scenario:   dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*EndToEnd*'
// End-to-end fairness (console harness, not BenchmarkDotNet):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- fairness
// PostgreSQL end to end (console harness; starts a throwaway server): benchmarks/postgres.sh [jobs] [batches in flight] [drain]
// PostgreSQL tenant fairness, end to end (console harness): benchmarks/postgres.sh fairness [flood jobs]
if (args is ["postgres-fairness", ..])
{
    await JobRunner.Benchmarks.PostgresFairness.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 20_000);
    return;
}

if (args is ["postgres", ..])
{
    await JobRunner.Benchmarks.PostgresThroughput.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 50_000,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 1,
        args.Length > 3 ? args[3] : null);
    return;
}

// SQS drain against the emulator (needs JOBRUNNER_TEST_SQS: run it inside `source eng/test-services/aws.sh`):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- sqs [jobs] [rounds]
if (args is ["sqs", ..])
{
    await JobRunner.Benchmarks.SqsDrain.RunAsync(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 2000, args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 3);
    return;
}

// Kubernetes engine through the fake API server (requests per job, jobs/s):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- kubernetes [jobs] [concurrency] [podSeconds]
if (args is ["kubernetes", ..])
{
    await JobRunner.Benchmarks.KubernetesRequests.RunAsync(args);
    return;
}

// Enqueue → start latency at 50 % of the measured maximum throughput, open loop, 8 slots (console harness):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- latency [jobs] [rounds]
if (args is ["latency", ..])
{
    await JobRunner.Benchmarks.Latency.RunAsync(args);
    return;
}

// Where the in-memory end-to-end path allocates (sampled AllocationTick events):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- allocs [jobs] [slots] [singleton]
// ("singleton": the workload is registered as a singleton, so attempts create no DI scope)
if (args is ["allocs", ..])
{
    await JobRunner.Benchmarks.AllocationProfile.RunAsync(
        args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 500_000,
        args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 8,
        singleton: args is [_, _, _, "singleton", ..]);
    return;
}

// What this machine allows an in-memory job pipeline (raw channels, a minimal record/lease/complete pipeline), next
// to JobRunner, alternated in one process:
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- ceiling [jobs] [rounds]
if (args is ["ceiling", ..])
{
    await JobRunner.Benchmarks.Ceiling.RunAsync(args);
    return;
}

if (args is ["fairness"])
{
    await JobRunner.Benchmarks.Fairness.RunAsync();
    return;
}

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
