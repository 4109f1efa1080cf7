using JobRunner.Aws.S3;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.S3;

/// <summary>The S3 log and checkpoint stores against fauxqs's S3 (path-style).</summary>
public sealed class S3StoreIntegrationTests
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task Bucket_ReadFromAMissingBucket_IsAnErrorNamingTheFix_NotAMissingObject()
    {
        // A queue would otherwise take a large message whose body it cannot read for poison, and move it away.
        var options = S3Options();
        options.Bucket = "jobrunner-missing-" + Guid.NewGuid().ToString("N")[..12];
        using var missing = AwsSetup.CreateBucket(options);
        using var present = await CreateBucketAsync();

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => missing.GetAsync("payloads/x", CancellationToken.None));

        Assert.Equal("NoSuchBucket", error.Code);
        Assert.Contains("Create the bucket", error.Message, StringComparison.Ordinal);
        Assert.Null(await present.GetAsync("payloads/x", CancellationToken.None));
    }

    [Fact]
    public async Task LogStore_AppendsAcrossAttempts_AndReadsPageByPage()
    {
        using var bucket = await CreateBucketAsync("jr/");
        var store = new S3LogStore(bucket);
        var job = JobId.New(TimeProvider.System);
        var first = new JobLease(job, "w1", FenceToken: 1, Attempt: 1, T0.AddMinutes(1));
        var second = new JobLease(job, "w2", FenceToken: 2, Attempt: 2, T0.AddMinutes(5));

        var a = await store.AppendAsync(first, Lines(0, 4), Guard());
        var b = await store.AppendAsync(first, Lines(4, 3), Guard());
        // Another host (a new store instance) continues the job's offsets from what S3 holds.
        var c = await new S3LogStore(bucket).AppendAsync(second, Lines(7, 3), Guard());

        Assert.Equal([0L, 1, 2, 3], a.Select(e => e.Offset));
        Assert.Equal([4L, 5, 6], b.Select(e => e.Offset));
        Assert.Equal([7L, 8, 9], c.Select(e => e.Offset));
        Assert.All(c, e => Assert.Equal(2, e.Attempt));

        var read = new List<LogEntry>();
        var query = new LogQuery { Limit = 3 };
        var pages = 0;
        while (true)
        {
            var page = await store.ReadAsync(job, query, Guard());
            pages++;
            if (page.Entries.Count == 0)
            {
                Assert.Equal(10, page.NextOffset);
                break;
            }

            Assert.True(page.Entries.Count <= 3);
            read.AddRange(page.Entries);
            query = query with { Offset = page.NextOffset };
        }

        Assert.Equal(5, pages);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => $"line {i}"), read.Select(e => e.Message));
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (long)i), read.Select(e => e.Offset));
        Assert.Equal(T0.AddSeconds(5), read[5].Timestamp);
        Assert.Equal(LogStream.Error, read[1].Stream);

        var secondAttempt = await store.ReadAsync(job, new LogQuery { Attempt = 2 }, Guard());
        Assert.Equal([7L, 8, 9], secondAttempt.Entries.Select(e => e.Offset));
        var since = await store.ReadAsync(job, new LogQuery { Since = T0.AddSeconds(8) }, Guard());
        Assert.Equal([8L, 9], since.Entries.Select(e => e.Offset));
        Assert.Empty((await store.ReadAsync(JobId.New(TimeProvider.System), new LogQuery(), Guard())).Entries);
    }

    [Fact]
    public async Task LogStore_StaleWritersOverlap_ReadersKeepTheNewerFence()
    {
        using var bucket = await CreateBucketAsync();
        var job = JobId.New(TimeProvider.System);
        var stale = new S3LogStore(bucket);
        var fresh = new S3LogStore(bucket);
        await stale.AppendAsync(new JobLease(job, "w1", 1, 1, T0), Lines(0, 2), Guard());
        await fresh.AppendAsync(new JobLease(job, "w2", 2, 2, T0), Lines(100, 2), Guard());

        // The old owner does not know it lost the lease and writes the same offsets again.
        await stale.AppendAsync(new JobLease(job, "w1", 1, 1, T0), Lines(200, 2), Guard());
        var page = await fresh.ReadAsync(job, new LogQuery(), Guard());

        Assert.Equal(["line 0", "line 1", "line 100", "line 101"], page.Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task CheckpointStore_NewestFenceWins_AndAStaleWriterCannotReplaceIt()
    {
        using var bucket = await CreateBucketAsync();
        var store = new S3CheckpointStore(bucket);
        var job = JobId.New(TimeProvider.System);

        Assert.Null(await store.LoadAsync(job, Guard()));
        await store.SaveAsync(new JobLease(job, "w1", 3, 1, T0), "one"u8.ToArray(), Guard());
        await store.SaveAsync(new JobLease(job, "w1", 3, 1, T0), "two"u8.ToArray(), Guard());
        await store.SaveAsync(new JobLease(job, "w2", 7, 2, T0), "three"u8.ToArray(), Guard());
        var stale = await Assert.ThrowsAsync<StaleFenceTokenException>(() => store.SaveAsync(new JobLease(job, "w1", 3, 1, T0), "late"u8.ToArray(), Guard()).AsTask());
        var loaded = await store.LoadAsync(job, Guard());

        Assert.Equal(3, stale.PresentedToken);
        Assert.Equal(7, stale.CurrentToken);
        Assert.NotNull(loaded);
        Assert.Equal(7, loaded.FenceToken);
        Assert.Equal(2, loaded.Attempt);
        Assert.Equal("three"u8.ToArray(), loaded.Data.ToArray());
        Assert.Equal([store.Key(job, 7)], await bucket.ListAsync(bucket.Prefix + "checkpoints/" + job + "/", null, Guard()));
    }

    [Fact]
    public async Task CheckpointStore_CorruptNewest_FallsBackToTheNewestValid()
    {
        using var bucket = await CreateBucketAsync();
        var store = new S3CheckpointStore(bucket);
        var job = JobId.New(TimeProvider.System);
        await store.SaveAsync(new JobLease(job, "w1", 4, 1, T0), "good"u8.ToArray(), Guard());
        // A newer object whose body does not match its checksum (written by something else, or damaged).
        await bucket.PutAsync(store.Key(job, 9), "JRCP1 9 2 0000\nbad"u8.ToArray(), Guard());

        var loaded = await store.LoadAsync(job, Guard());

        Assert.Equal(4, loaded!.FenceToken);
        Assert.Equal("good"u8.ToArray(), loaded.Data.ToArray());
    }

    [Fact]
    public async Task MissingBucket_FailsWithAnErrorThatNamesTheFix()
    {
        var options = S3Options();
        using var bucket = AwsSetup.CreateBucket(options);

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => bucket.EnsureExistsAsync(create: false, Guard()));

        Assert.Equal("NoSuchBucket", error.Code);
        Assert.Contains($"'{options.Bucket}' does not exist", error.Message, StringComparison.Ordinal);
        Assert.Contains("CreateBucket = true", error.Message, StringComparison.Ordinal);
    }

    private static List<LogLine> Lines(int from, int count)
        => Enumerable.Range(from, count).Select(i => new LogLine(T0.AddSeconds(i), i % 2 == 1 ? LogStream.Error : LogStream.Output, $"line {i}")).ToList();
}
