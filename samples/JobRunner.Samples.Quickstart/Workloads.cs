using JobRunner;

namespace JobRunner.Samples.Quickstart;

public sealed record GreetInput(string Name);

/// <summary>A quick job that logs and reports progress.</summary>
public sealed class Greet : Workload<GreetInput>
{
    protected override async ValueTask ExecuteAsync(GreetInput input, WorkloadContext context, CancellationToken cancellationToken)
    {
        await context.LogAsync($"Hello, {input.Name}!", cancellationToken: cancellationToken);
        for (var step = 1; step <= 4; step++)
        {
            await Task.Delay(25, cancellationToken);
            await context.ReportProgressAsync(step / 4.0, $"step {step}/4", cancellationToken);
        }
    }
}

public sealed record FlakyInput(int FailTimes);

/// <summary>Fails with a transient error on its first attempts, then succeeds.</summary>
public sealed class Flaky : Workload<FlakyInput>
{
    protected override ValueTask ExecuteAsync(FlakyInput input, WorkloadContext context, CancellationToken cancellationToken)
    {
        if (context.Attempt <= input.FailTimes)
        {
            throw new IOException($"The upstream service is unavailable (attempt {context.Attempt}).");
        }

        return context.LogAsync($"Succeeded on attempt {context.Attempt}.", cancellationToken: cancellationToken);
    }
}

public sealed record ImportInput(int Items, int CrashAt);

public sealed record ImportCheckpoint(int Done);

/// <summary>Imports items one by one, checkpointing after each; its first attempt crashes half-way.</summary>
public sealed class Import : Workload<ImportInput, ImportCheckpoint>
{
    protected override async ValueTask ExecuteAsync(ImportInput input, ImportCheckpoint? checkpoint, WorkloadContext context, CancellationToken cancellationToken)
    {
        var start = checkpoint?.Done ?? 0;
        await context.LogAsync(start == 0 ? "Starting the import." : $"Resuming the import after item {start}.", cancellationToken: cancellationToken);
        for (var item = start + 1; item <= input.Items; item++)
        {
            if (context.Attempt == 1 && item == input.CrashAt)
            {
                throw new InvalidOperationException($"Simulated crash while importing item {item}.");
            }

            await Task.Delay(10, cancellationToken);
            await context.SaveCheckpointAsync(new ImportCheckpoint(item), cancellationToken);
            await context.ReportProgressAsync((double)item / input.Items, $"item {item}/{input.Items}", cancellationToken);
        }
    }
}

/// <summary>Runs until cancelled: used for the cancellation and the timeout.</summary>
public sealed class Forever : IWorkload
{
    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        await context.LogAsync("Working until told to stop.", cancellationToken: cancellationToken);
        await Task.Delay(Timeout.Infinite, cancellationToken);
    }
}
