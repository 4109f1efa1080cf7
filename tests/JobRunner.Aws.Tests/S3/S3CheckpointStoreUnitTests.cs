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

/// <summary>The S3 checkpoint store's races, on a substitute S3 client whose answers the test controls.</summary>
public sealed class S3CheckpointStoreUnitTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);
    private static readonly DateTimeOffset T0 = new(2026, 11, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task CheckpointSave_NewerFenceSavedDuringThePut_FailsAsStale()
    {
        var s3 = Substitute.For<IAmazonS3>();
        using var store = new S3CheckpointStore(new S3Bucket(s3, "state", "", ownsClient: false));
        var lease = new JobLease(JobId.New(TimeProvider.System), "w1", FenceToken: 5, Attempt: 1, T0);
        s3.ListObjectsV2Async(Arg.Any<ListObjectsV2Request>(), Arg.Any<CancellationToken>())
            .Returns(Listing(), Listing(store.Key(lease.JobId, 5), store.Key(lease.JobId, 6)));

        var error = await Assert.ThrowsAsync<StaleFenceTokenException>(() => store.SaveAsync(lease, new byte[] { 1, 2, 3 }, CancellationToken.None).AsTask());

        Assert.Equal((5L, 6L), (error.PresentedToken, error.CurrentToken));
    }

    [Fact]
    public async Task CheckpointSave_CleanUpOfAnOlderCheckpointFails_TheSaveStillSucceeds()
    {
        var s3 = Substitute.For<IAmazonS3>();
        using var store = new S3CheckpointStore(new S3Bucket(s3, "state", "", ownsClient: false));
        var lease = new JobLease(JobId.New(TimeProvider.System), "w1", FenceToken: 5, Attempt: 2, T0);
        s3.ListObjectsV2Async(Arg.Any<ListObjectsV2Request>(), Arg.Any<CancellationToken>())
            .Returns(Listing(store.Key(lease.JobId, 3)), Listing(store.Key(lease.JobId, 3), store.Key(lease.JobId, 5)));
        s3.DeleteObjectAsync(Arg.Any<string>(), Arg.Any<string>(), Arg.Any<CancellationToken>())
            .ThrowsAsync(new AmazonS3Exception("busy") { StatusCode = HttpStatusCode.ServiceUnavailable, ErrorCode = "SlowDown" });

        await store.SaveAsync(lease, new byte[] { 1, 2, 3 }, CancellationToken.None);

        await s3.Received(1).PutObjectAsync(Arg.Is<PutObjectRequest>(r => r.Key == store.Key(lease.JobId, 5)), Arg.Any<CancellationToken>());
    }

    [Fact]
    public async Task CheckpointLoad_ListedCheckpointDeletedBeforeItsRead_ListsAgainAndFindsTheNewerOne()
    {
        var s3 = Substitute.For<IAmazonS3>();
        using var store = new S3CheckpointStore(new S3Bucket(s3, "state", "", ownsClient: false));
        var job = JobId.New(TimeProvider.System);
        s3.ListObjectsV2Async(Arg.Any<ListObjectsV2Request>(), Arg.Any<CancellationToken>())
            .Returns(Listing(store.Key(job, 3)), Listing(store.Key(job, 4)));
        s3.GetObjectAsync("state", store.Key(job, 3), Arg.Any<CancellationToken>())
            .ThrowsAsync(new AmazonS3Exception("gone") { StatusCode = HttpStatusCode.NotFound, ErrorCode = "NoSuchKey" });
        byte[] data = [7, 8, 9];
        var body = Encoding.ASCII.GetBytes($"JRCP1 4 2 {Convert.ToHexStringLower(SHA256.HashData(data))}\n").Concat(data).ToArray();
        s3.GetObjectAsync("state", store.Key(job, 4), Arg.Any<CancellationToken>())
            .Returns(_ => new GetObjectResponse { ResponseStream = new MemoryStream(body), ContentLength = body.Length });

        var loaded = await store.LoadAsync(job, CancellationToken.None);

        Assert.NotNull(loaded);
        Assert.Equal(4, loaded.FenceToken);
        Assert.Equal(data, loaded.Data.ToArray());
    }

    [Fact]
    public async Task CheckpointLoad_NewestListedDeletedBeforeItsRead_DoesNotTakeAnOlderLeftover()
    {
        // Fence 3 is a leftover of a failed clean-up; 10 is deleted by a save of 15 between the listing and the read.
        var s3 = Substitute.For<IAmazonS3>();
        using var store = new S3CheckpointStore(new S3Bucket(s3, "state", "", ownsClient: false));
        var job = JobId.New(TimeProvider.System);
        s3.ListObjectsV2Async(Arg.Any<ListObjectsV2Request>(), Arg.Any<CancellationToken>())
            .Returns(Listing(store.Key(job, 3), store.Key(job, 10)), Listing(store.Key(job, 3), store.Key(job, 15)));
        s3.GetObjectAsync("state", store.Key(job, 10), Arg.Any<CancellationToken>())
            .ThrowsAsync(new AmazonS3Exception("gone") { StatusCode = HttpStatusCode.NotFound, ErrorCode = "NoSuchKey" });
        s3.GetObjectAsync("state", store.Key(job, 3), Arg.Any<CancellationToken>()).Returns(_ => Checkpoint(3, [1]));
        s3.GetObjectAsync("state", store.Key(job, 15), Arg.Any<CancellationToken>()).Returns(_ => Checkpoint(15, [9]));

        var loaded = await store.LoadAsync(job, CancellationToken.None);

        Assert.Equal(15, loaded!.FenceToken);
    }

    private static GetObjectResponse Checkpoint(long fence, byte[] data)
    {
        var body = Encoding.ASCII.GetBytes($"JRCP1 {fence} 2 {Convert.ToHexStringLower(SHA256.HashData(data))}\n").Concat(data).ToArray();
        return new GetObjectResponse { ResponseStream = new MemoryStream(body), ContentLength = body.Length };
    }

    private static ListObjectsV2Response Listing(params string[] keys)
        => new() { S3Objects = keys.Select(k => new S3Object { Key = k }).ToList(), IsTruncated = false };
}
