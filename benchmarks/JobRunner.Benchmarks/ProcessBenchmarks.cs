using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using JobRunner;

namespace JobRunner.Benchmarks;

/// <summary>
/// Start and reap short processes: JobRunner container jobs (submit → process engine → completed, one slot) against a
/// raw Process.Start loop with the same redirection, in the same run. Per process.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class ProcessStartBenchmarks
{
    public const int Processes = 1000;

    private Harness _harness = null!;
    private Harness _withoutGroups = null!;

    [GlobalSetup]
    public async Task SetupAsync()
    {
        _harness = await Harness.StartAsync(runner => runner
            .ConfigureWorker(w => w.Slots = 1)
            .AddContainerWorkload("true", new ContainerSpec { Image = "local", Command = ["/bin/true"] }));
        _withoutGroups = await Harness.StartAsync(runner => runner
            .ConfigureWorker(w => w.Slots = 1)
            .ConfigureProcessEngine(p => p.UseProcessGroups = false)
            .AddContainerWorkload("true", new ContainerSpec { Image = "local", Command = ["/bin/true"] }));
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        await _harness.DisposeAsync();
        await _withoutGroups.DisposeAsync();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Processes, Description = "raw Process.Start loop")]
    public async Task RawProcessStart()
    {
        for (var i = 0; i < Processes; i++)
        {
            using var process = Process.Start(new ProcessStartInfo("/bin/true") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false })!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            await Task.WhenAll(stdout, stderr);
        }
    }

    [Benchmark(OperationsPerInvoke = Processes, Description = "raw Process.Start loop through setsid")]
    public async Task RawProcessStartThroughSetsid()
    {
        for (var i = 0; i < Processes; i++)
        {
            var info = new ProcessStartInfo("/usr/bin/setsid") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            info.ArgumentList.Add("/bin/true");
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            await Task.WhenAll(stdout, stderr);
        }
    }

    [Benchmark(OperationsPerInvoke = Processes, Description = "JobRunner container job (process engine)")]
    public Task JobRunnerProcessJobs() => _harness.RunAsync(new JobRequest("true"), Processes);

    [Benchmark(OperationsPerInvoke = Processes, Description = "JobRunner container job, UseProcessGroups = false")]
    public Task JobRunnerProcessJobsWithoutGroups() => _withoutGroups.RunAsync(new JobRequest("true"), Processes);
}

/// <summary>
/// Log capture from one process writing 100 MB of lines (<c>cat</c> of a file of 1,000,000 lines of 99 characters):
/// JobRunner streams them into the in-memory log store (bounded per job) against a raw loop that reads the same lines
/// and drops them, in the same run.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class LogCaptureBenchmarks
{
    private readonly string _file = Path.Combine(Path.GetTempPath(), "jobrunner-bench-100mb.txt");
    private Harness _harness = null!;

    [GlobalSetup]
    public async Task SetupAsync()
    {
        if (!File.Exists(_file) || new FileInfo(_file).Length != 100_000_000)
        {
            var line = new string('x', 99) + "\n";
            await using var writer = new StreamWriter(_file);
            for (var i = 0; i < 1_000_000; i++)
            {
                await writer.WriteAsync(line);
            }
        }

        _harness = await Harness.StartAsync(runner => runner
            .ConfigureWorker(w => w.Slots = 1)
            .AddContainerWorkload("spew", new ContainerSpec { Image = "local", Command = ["/bin/cat", _file] }));
    }

    [GlobalCleanup]
    public async Task CleanupAsync() => await _harness.DisposeAsync();

    [Benchmark(Baseline = true, Description = "raw: read 100 MB of lines and drop them")]
    public async Task<long> RawReadLines()
    {
        var info = new ProcessStartInfo("/bin/cat") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(_file);
        using var process = Process.Start(info)!;
        long lines = 0;
        while (await process.StandardOutput.ReadLineAsync() is not null)
        {
            lines++;
        }

        await process.WaitForExitAsync();
        return lines;
    }

    [Benchmark(Description = "JobRunner: capture 100 MB of lines into the log store")]
    public Task JobRunnerCapture() => _harness.RunAsync(new JobRequest("spew"), 1);
}
