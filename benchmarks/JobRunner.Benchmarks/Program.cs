using BenchmarkDotNet.Running;

// Run all:            dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*'
// Run one scenario:   dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*EndToEnd*'
// End-to-end fairness (console harness, not BenchmarkDotNet):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- fairness
// Kubernetes engine through the fake API server (requests per job, jobs/s):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- kubernetes [jobs] [concurrency] [podSeconds]
if (args is ["kubernetes", ..])
{
    await JobRunner.Benchmarks.KubernetesRequests.RunAsync(args);
    return;
}

if (args is ["fairness"])
{
    await JobRunner.Benchmarks.Fairness.RunAsync();
    return;
}

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
