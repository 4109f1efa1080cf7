using BenchmarkDotNet.Running;

// Run all:            dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*'
// Run one scenario:   dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- --filter '*EndToEnd*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
