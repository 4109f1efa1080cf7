using JobRunner.Kubernetes.Engine;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Kubernetes.Tests.Engine;

/// <summary>Where a re-attached run resumes the pod's log: the end of what earlier attempts stored, found from the log's end.</summary>
public sealed class StoredLogEndTests
{
    private static readonly DateTimeOffset s_start = new(2026, 11, 23, 3, 0, 0, TimeSpan.Zero);
    private readonly ILogStore _logs = new ServiceCollection().AddJobRunner(static _ => { }).BuildServiceProvider().GetRequiredService<ILogStore>();
    private readonly JobId _job = JobId.New(TimeProvider.System);

    [Theory]
    [InlineData(7)]
    [InlineData(10_000)]
    public async Task Finds_the_last_output_line_past_system_lines_and_counts_its_equals_across_pages(int pageSize)
    {
        // Attempt 1 created the Job: 2,990 output lines a millisecond apart, then 10 more at one instant; attempt 2
        // re-attached and wrote system lines only. Attempt 3 asks.
        await AppendAsync(1, LogStream.System, 5, static _ => s_start);
        await AppendAsync(1, LogStream.Output, 2_990, static i => s_start.AddMilliseconds(i));
        await AppendAsync(1, LogStream.Output, 10, static _ => s_start.AddHours(1));
        await AppendAsync(2, LogStream.System, 20, static _ => s_start.AddHours(2));

        var end = await KubernetesEngine.FindStoredLogEndAsync(_logs, _job, created: 1, attempt: 3, pageSize, default);

        Assert.Equal((s_start.AddHours(1), 10), end);
    }

    [Fact]
    public async Task Lines_of_attempts_before_the_Job_count_for_nothing()
    {
        // Attempt 1 had a Job of its own (it failed); attempt 2 created this one and stored no output yet.
        await AppendAsync(1, LogStream.Output, 1_500, static i => s_start.AddMilliseconds(i));
        await AppendAsync(2, LogStream.System, 3, static _ => s_start.AddHours(1));

        Assert.Null(await KubernetesEngine.FindStoredLogEndAsync(_logs, _job, created: 2, attempt: 3, pageSize: 100, default));
        Assert.Null(await KubernetesEngine.FindStoredLogEndAsync(_logs, JobId.New(TimeProvider.System), created: 1, attempt: 2, pageSize: 100, default));
    }

    private async Task AppendAsync(int attempt, LogStream stream, int count, Func<int, DateTimeOffset> at)
    {
        var lease = new JobLease(_job, "w", attempt, attempt, DateTimeOffset.MaxValue);
        var lines = Enumerable.Range(0, count).Select(i => new LogLine(at(i), stream, $"{stream} {i}")).ToArray();
        await _logs.AppendAsync(lease, lines, default);
    }
}
