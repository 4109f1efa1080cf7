using System.Net;
using System.Security.Cryptography;
using System.Text;
using Amazon.S3;
using Amazon.S3.Model;
using JobRunner.Aws.S3;
using NSubstitute;
using NSubstitute.ExceptionExtensions;
using S3Bucket = JobRunner.Aws.S3.S3Bucket;

namespace JobRunner.Aws.Tests.S3;

/// <summary>The S3 log store's writer cache, on a substitute S3 client whose answers the test controls.</summary>
public sealed class S3LogStoreUnitTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);
    private static readonly DateTimeOffset T0 = new(2026, 11, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task LogStore_WriterCacheFull_KeepsAWriterThatIsInUse()
    {
        // With the cache over its size, a second append of the same job while the first is still writing must wait for
        // it and continue its offsets, not start a new writer that counts from the same offset and overwrites the chunk.
        var s3 = Substitute.For<IAmazonS3>();
        s3.ListObjectsV2Async(Arg.Any<ListObjectsV2Request>(), Arg.Any<CancellationToken>()).Returns(_ => new ListObjectsV2Response());
        var keys = new List<string>();
        var firstPut = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        s3.PutObjectAsync(Arg.Any<PutObjectRequest>(), Arg.Any<CancellationToken>()).Returns(async call =>
        {
            lock (keys)
            {
                keys.Add(call.Arg<PutObjectRequest>().Key);
            }

            if (firstPut.TrySetResult())
            {
                await gate.Task;
            }

            return new PutObjectResponse();
        });
        using var store = new S3LogStore(new S3Bucket(s3, "logs", "", ownsClient: false), maxWriters: 0);
        var lease = new JobLease(JobId.New(TimeProvider.System), "w1", FenceToken: 1, Attempt: 1, T0);

        var first = store.AppendAsync(lease, [new LogLine(T0, LogStream.Output, "one")], CancellationToken.None).AsTask();
        await firstPut.Task.WaitAsync(Hang);
        var second = store.AppendAsync(lease, [new LogLine(T0, LogStream.Output, "two"), new LogLine(T0, LogStream.Output, "three")], CancellationToken.None).AsTask();
        gate.SetResult();

        Assert.Equal(0, Assert.Single(await first.WaitAsync(Hang)).Offset);
        Assert.Equal([1L, 2L], (await second.WaitAsync(Hang)).Select(e => e.Offset));
        Assert.Equal(2, keys.Count);
        Assert.EndsWith("/000000000001.2.1.1.json", keys[1], StringComparison.Ordinal);
    }
}
