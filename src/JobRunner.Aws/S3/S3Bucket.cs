using System.Net;
using Amazon;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using JobRunner.Aws.Http;

namespace JobRunner.Aws.S3;

/// <summary>The few S3 operations the stores need, over AWSSDK.S3, with S3 errors turned into <see cref="AwsServiceException"/>.</summary>
internal sealed class S3Bucket : IDisposable
{
    private readonly IAmazonS3 _s3;
    private readonly bool _ownsClient;

    public S3Bucket(IAmazonS3 s3, string bucket, string prefix, bool ownsClient)
    {
        _s3 = s3;
        Name = bucket;
        Prefix = prefix;
        _ownsClient = ownsClient;
    }

    public string Name { get; }

    public string Prefix { get; }

    public static S3Bucket Create(S3StoreOptions options, AWSCredentials credentials)
    {
        var config = new AmazonS3Config
        {
            ForcePathStyle = options.ForcePathStyle,
            // Checksums only where S3 requires them: emulators do not all speak the aws-chunked trailer encoding.
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
        };
        if (options.ServiceUrl is { } url)
        {
            config.ServiceURL = url.ToString();
            config.AuthenticationRegion = options.Region;
        }
        else
        {
            config.RegionEndpoint = RegionEndpoint.GetBySystemName(options.Region);
        }

        return new S3Bucket(new AmazonS3Client(credentials, config), options.Bucket!, options.Prefix, ownsClient: true);
    }

    public async Task EnsureExistsAsync(bool create, CancellationToken cancellationToken)
    {
        try
        {
            await _s3.ListObjectsV2Async(new ListObjectsV2Request { BucketName = Name, MaxKeys = 1, Prefix = Prefix }, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound || e.ErrorCode == "NoSuchBucket")
        {
            if (!create)
            {
                throw new AwsServiceException("s3", "NoSuchBucket", e.StatusCode, transient: false, $"The S3 bucket '{Name}' does not exist. Create it, set S3StoreOptions.CreateBucket = true, or check S3StoreOptions.Bucket and Region.", e);
            }

            await Call(() => _s3.PutBucketAsync(new PutBucketRequest { BucketName = Name }, cancellationToken), "PutBucket").ConfigureAwait(false);
        }
        catch (AmazonServiceException e)
        {
            throw Map(e, "ListObjectsV2");
        }
    }

    public Task PutAsync(string key, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
        => Call(() => _s3.PutObjectAsync(new PutObjectRequest { BucketName = Name, Key = key, InputStream = new MemoryStream(body.ToArray(), writable: false), AutoCloseStream = true }, cancellationToken), "PutObject");

    /// <summary>Reads an object; <see langword="null"/> when it does not exist. A missing bucket is an error, not a missing object.</summary>
    public async Task<byte[]?> GetAsync(string key, CancellationToken cancellationToken)
    {
        try
        {
            using var response = await _s3.GetObjectAsync(Name, key, cancellationToken).ConfigureAwait(false);
            using var copy = new MemoryStream(response.ContentLength > 0 ? (int)Math.Min(response.ContentLength, int.MaxValue) : 256);
            await response.ResponseStream.CopyToAsync(copy, cancellationToken).ConfigureAwait(false);
            return copy.ToArray();
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound && e.ErrorCode != "NoSuchBucket")
        {
            return null;
        }
        catch (AmazonServiceException e)
        {
            throw Map(e, "GetObject");
        }
    }

    /// <summary>Lists the keys under <paramref name="prefix"/> in key order, after <paramref name="startAfter"/>.</summary>
    public async Task<List<string>> ListAsync(string prefix, string? startAfter, CancellationToken cancellationToken)
    {
        var keys = new List<string>();
        string? token = null;
        do
        {
            var request = new ListObjectsV2Request { BucketName = Name, Prefix = prefix, ContinuationToken = token };
            if (token is null && startAfter is not null)
            {
                request.StartAfter = startAfter;
            }

            var response = await Call(() => _s3.ListObjectsV2Async(request, cancellationToken), "ListObjectsV2").ConfigureAwait(false);
            foreach (var item in response.S3Objects ?? [])
            {
                keys.Add(item.Key);
            }

            token = response.IsTruncated == true ? response.NextContinuationToken : null;
        }
        while (token is not null);

        keys.Sort(StringComparer.Ordinal);
        return keys;
    }

    public Task DeleteAsync(string key, CancellationToken cancellationToken)
        => Call(() => _s3.DeleteObjectAsync(Name, key, cancellationToken), "DeleteObject");

    public void Dispose()
    {
        if (_ownsClient)
        {
            _s3.Dispose();
        }
    }

    private static async Task<TResult> Call<TResult>(Func<Task<TResult>> call, string action)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (AmazonServiceException e)
        {
            throw Map(e, action);
        }
    }

    private static AwsServiceException Map(AmazonServiceException e, string action)
    {
        var code = e.ErrorCode ?? "HttpError" + ((int)e.StatusCode).ToString(System.Globalization.CultureInfo.InvariantCulture);
        var transient = AwsRetry.IsTransientStatus((int)e.StatusCode) || AwsRetry.IsTransientCode(code);
        var hint = code switch
        {
            "NoSuchBucket" => " Create the bucket, set S3StoreOptions.CreateBucket = true, or check the bucket name and region.",
            "InvalidAccessKeyId" or "SignatureDoesNotMatch" => " Check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role).",
            "AccessDenied" => " Grant the credentials s3:GetObject, PutObject, DeleteObject and ListBucket on the bucket.",
            "AuthorizationHeaderMalformed" or "PermanentRedirect" => " The bucket is in another region: set S3StoreOptions.Region to the bucket's region.",
            _ => "",
        };
        return new AwsServiceException("s3", code, e.StatusCode, transient, $"S3 {action} failed with {code} ({(int)e.StatusCode}): {e.Message}.{hint}", e);
    }
}
