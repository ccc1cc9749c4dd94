//! Test keys, generated once with openssl 3 and used by the tests only. Never use them
//! for anything else.

/// RSA 2048, PKCS#8 (`openssl genpkey -algorithm RSA`).
pub(super) const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDZ0Vkg5N269UCl
R/Y/CyeJxkT3jTKMIYaigT2F5hrSkDtd0k/TZvmIVzh6DDNKETnl3SegN9KsDx17
TJpY3Mex2EuxQCm2wEbcNppywWzfHZwE732vT8VoXukF68qqiP7w4ZTRB+Waywqf
BqMvVCz8h+BOcu5gQ7XluGiqaXz1P0i25Bw4gVsyn3lMMBYE7SKagKtG+oSqAoAv
aB+OsmohZ/dMBCEJCMnVt52j8fVEIi3B/vTlqMOmMFRp0G3qDdjH3D3Pd5VtQ5Ay
2ZoX6sQJty3OFd2pgTFG0wKFKHSzJpelSibaI5+X02WovzFJnHU9qj3NwqyC6wFh
jvSDl0kfAgMBAAECggEAAM0xlUU9AE+fuxv5LtaKgN90aIQh//xYQ6fTGKI1+Llk
JokRbHc6tYLl/SOnWqnr5cnQYq63PT/ZqBb/kxJ46lF1Ry6JGMLmCoW+6sDbIYpj
2mwhMRsg4FdHvJMCDhTupJHym2mlMX0hdGAGC19gF6vOVQDnmf4Vy3ByyNHA48wj
6PMSY0UiPqkog1xT0oFR8iKCRV3EQ5wfn8OKratgcozJg5ggCw15VOB8ygQoF5tE
mmY1sfeTf8KAVWHAIcABCt6YC2LBBUrN27TtygqR9z8Aa33KfZA/MS35UcltJIeu
Y40KPEjw29mbh2hORKrzE3YQQL2YjqUk6xd+s/8UcQKBgQD/I1i+l6jzwsOafpjH
R2vO+OdfPdTrgq/9t6XIer7ekdcAjQj/j3+YSX38UFYP7+VeVZ1TLF5Oi23K6ql6
CMwEG1Ye1WDhB3d3eh/JTdBdKk1FrTdn28WE87UB0/LhnjCUFufautBvFgdqACbA
VrQP9SY7XYG75cqhx8wHwTz/UQKBgQDajbm2ySjiyjCbM0+jfBJGO74E3tLW2iDm
uQrwEIgIME/3lF95ZBxVzBuOCeRRJYCzeEGvsILA0pO7VaoIwXHRn6QchYlyW7jU
a3Y8vbDzilnO1imrYydSWgSHDMTGnH1xLPpRyuzHSTgIBuQnBn3PLMS2CoJv6mcS
vqcDPKgFbwKBgAuf5qk4a8A/fX4Kipd5z5WsjY4vWQYp/C7JMUqDHTMy3eLuihxq
w1uC7bSTTHiJa5/ysqpZeSqG+8elDXe78t+1ByV8f1+BYZYWAGDBpN650K9+Buo6
fzNhjzu4FnblKD13FbVHkbud+1R/EUTuLmITv1wxFHolLChW3Br2WPshAoGAFYGW
wc7fsBl3WP5emtbNsY2VcENA+hVy4WFaGy91Q2EFrXYzQu3AAA1atMpyZi3LkV2H
ETPMWg8erHOMjNoESj1sV8YoNVGjSXvdobKE5CI8Hidi6FOUff0Prv5pqqWhjm5/
n2bZj+67jcan0tNHtAhSvxsfpMWrKOQL6TyhyA8CgYBH8Xck4+rb+SUflLLGAzzF
+Ucb6WPTBj/Ga5rnMNh5KHfzvseHTj6ZAB+NG/FSBdzK0FqskfCpDvBgyYxKr7fz
yo/Fc/9D5k+BSwZbJGJERelZCkAC7tyjaI2sSd4GxpvEcFrbSR69WDXURaNMjjxf
5fwPfpf+WhWAiTM2aYRF3g==
-----END PRIVATE KEY-----
";

/// The public key of [`RSA_PRIVATE`], SPKI.
pub(super) const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2dFZIOTduvVApUf2Pwsn
icZE940yjCGGooE9heYa0pA7XdJP02b5iFc4egwzShE55d0noDfSrA8de0yaWNzH
sdhLsUAptsBG3DaacsFs3x2cBO99r0/FaF7pBevKqoj+8OGU0QflmssKnwajL1Qs
/IfgTnLuYEO15bhoqml89T9ItuQcOIFbMp95TDAWBO0imoCrRvqEqgKAL2gfjrJq
IWf3TAQhCQjJ1bedo/H1RCItwf705ajDpjBUadBt6g3Yx9w9z3eVbUOQMtmaF+rE
CbctzhXdqYExRtMChSh0syaXpUom2iOfl9NlqL8xSZx1Pao9zcKsgusBYY70g5dJ
HwIDAQAB
-----END PUBLIC KEY-----
";

/// The public key of [`RSA_PRIVATE`], PKCS#1.
pub(super) const RSA_PUBLIC_PKCS1: &str = "\
-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEA2dFZIOTduvVApUf2PwsnicZE940yjCGGooE9heYa0pA7XdJP02b5
iFc4egwzShE55d0noDfSrA8de0yaWNzHsdhLsUAptsBG3DaacsFs3x2cBO99r0/F
aF7pBevKqoj+8OGU0QflmssKnwajL1Qs/IfgTnLuYEO15bhoqml89T9ItuQcOIFb
Mp95TDAWBO0imoCrRvqEqgKAL2gfjrJqIWf3TAQhCQjJ1bedo/H1RCItwf705ajD
pjBUadBt6g3Yx9w9z3eVbUOQMtmaF+rECbctzhXdqYExRtMChSh0syaXpUom2iOf
l9NlqL8xSZx1Pao9zcKsgusBYY70g5dJHwIDAQAB
-----END RSA PUBLIC KEY-----
";

/// P-256, PKCS#8.
pub(super) const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMy6aF68fRNO63tWv
NiPIkjnm2NS2KWfcgKN4+aXrVk+hRANCAAQybGk0EIziycidN+e8NME4tbCNBn5/
5wu2/37qjTcqBBArARWJc6+lbqh6nBpfuBv6mJoHacRj4KYrzgGsbDzz
-----END PRIVATE KEY-----
";

/// The public key of [`EC_PRIVATE`].
pub(super) const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMmxpNBCM4snInTfnvDTBOLWwjQZ+
f+cLtv9+6o03KgQQKwEViXOvpW6oepwaX7gb+piaB2nEY+CmK84BrGw88w==
-----END PUBLIC KEY-----
";

/// Another P-256 key, PKCS#8.
pub(super) const EC2_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg/P3YMJ3x6ByZWZ30
U5Q28EU+wMqg6rpG6qvELWXFACChRANCAAT/ognmDMxGtlMRXuH02qaLXsfXYz2y
xJCNnLQl0F/lwCM4eG2CC7v5BR1mSGczvfMjg8YdNLgceYkaGM/Mgl8e
-----END PRIVATE KEY-----
";

/// The public key of [`EC2_PRIVATE`].
pub(super) const EC2_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/6IJ5gzMRrZTEV7h9Nqmi17H12M9
ssSQjZy0JdBf5cAjOHhtggu7+QUdZkhnM73zI4PGHTS4HHmJGhjPzIJfHg==
-----END PUBLIC KEY-----
";

/// A P-384 public key.
pub(super) const EC384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEQvlk+P5rBYVb3nTIlGKCL1iyeYmFYuJT
3aci8ZTyH8loda2cw/Uv6kw6tfpbaLpEpZmuAF4ygQ40LyvUDlt8Ig9hgd++xJMs
ScTa6XAFptQswneVyiAWbpnAIm4KsByp
-----END PUBLIC KEY-----
";

/// Ed25519, PKCS#8.
pub(super) const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBuaUbROvzpnE9hVDOxqvzqTerKEmDTO6qWOa0VTDay6
-----END PRIVATE KEY-----
";

/// The public key of [`ED_PRIVATE`].
pub(super) const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAAQZIpptJrYMJ9FYH/+9QxuvrP/Gtho7H5u8GKzHC0os=
-----END PUBLIC KEY-----
";
