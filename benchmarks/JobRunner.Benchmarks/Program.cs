using BenchmarkDotNet.Running;

// Run all:            dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*'
// Run one scenario:   dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*EndToEnd*'
// End-to-end fairness (console harness, not BenchmarkDotNet):
//                     dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- fairness
if (args is ["fairness"])
{
    await JobRunner.Benchmarks.Fairness.RunAsync();
    return;
}

BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
