/* The GM/T 0016-2012 types and functions the test harness uses, written from the
 * standard's definitions for Linux (no __stdcall; ULONG is 32 bits). Structures use the
 * standard header's 1-byte packing. */
#ifndef HSM_SIM_TEST_SKFAPI_H
#define HSM_SIM_TEST_SKFAPI_H

#include <stdint.h>

typedef int32_t BOOL;
typedef uint8_t BYTE;
typedef char CHAR;
typedef uint32_t ULONG;
typedef uint32_t DWORD;
typedef CHAR *LPSTR;
typedef void *HANDLE;
typedef HANDLE DEVHANDLE;
typedef HANDLE HAPPLICATION;
typedef HANDLE HCONTAINER;

#define TRUE 1
#define FALSE 0

#define SAR_OK 0x00000000
#define SAR_FAIL 0x0A000001
#define SAR_INVALIDHANDLEERR 0x0A000005
#define SAR_INVALIDPARAMERR 0x0A000006
#define SAR_NAMELENERR 0x0A000009
#define SAR_INDATALENERR 0x0A000010
#define SAR_KEYNOTFOUNTERR 0x0A00001B
#define SAR_CERTNOTFOUNTERR 0x0A00001C
#define SAR_BUFFER_TOO_SMALL 0x0A000020
#define SAR_NOT_EVENTERR 0x0A000022
#define SAR_DEVICE_REMOVED 0x0A000023
#define SAR_PIN_INCORRECT 0x0A000024
#define SAR_PIN_LOCKED 0x0A000025
#define SAR_PIN_LEN_RANGE 0x0A000027
#define SAR_USER_NOT_LOGGED_IN 0x0A00002D
#define SAR_APPLICATION_EXISTS 0x0A00002C
#define SAR_APPLICATION_NOT_EXISTS 0x0A00002E

#define SGD_SM4_ECB 0x00000401
#define SGD_SM2_1 0x00020100
#define SGD_SM3 0x00000001

#define ADMIN_TYPE 0
#define USER_TYPE 1
#define SECURE_USER_ACCOUNT 0x00000010
#define DEV_PRESENT_STATE 1

#define ECC_MAX_XCOORDINATE_BITS_LEN 512
#define ECC_MAX_YCOORDINATE_BITS_LEN 512

#pragma pack(push, 1)

typedef struct Struct_Version {
    BYTE major;
    BYTE minor;
} VERSION;

typedef struct Struct_DEVINFO {
    VERSION Version;
    CHAR Manufacturer[64];
    CHAR Issuer[64];
    CHAR Label[32];
    CHAR SerialNumber[32];
    VERSION HWVersion;
    VERSION FirmwareVersion;
    ULONG AlgSymCap;
    ULONG AlgAsymCap;
    ULONG AlgHashCap;
    ULONG DevAuthAlgId;
    ULONG TotalSpace;
    ULONG FreeSpace;
    ULONG MaxECCBufferSize;
    ULONG MaxBufferSize;
    BYTE Reserved[64];
} DEVINFO, *PDEVINFO;

typedef struct Struct_ECCPUBLICKEYBLOB {
    ULONG BitLen;
    BYTE XCoordinate[ECC_MAX_XCOORDINATE_BITS_LEN / 8];
    BYTE YCoordinate[ECC_MAX_YCOORDINATE_BITS_LEN / 8];
} ECCPUBLICKEYBLOB, *PECCPUBLICKEYBLOB;

typedef struct Struct_ECCCIPHERBLOB {
    BYTE XCoordinate[ECC_MAX_XCOORDINATE_BITS_LEN / 8];
    BYTE YCoordinate[ECC_MAX_XCOORDINATE_BITS_LEN / 8];
    BYTE HASH[32];
    ULONG CipherLen;
    BYTE Cipher[1];
} ECCCIPHERBLOB, *PECCCIPHERBLOB;

typedef struct Struct_ECCSIGNATUREBLOB {
    BYTE r[ECC_MAX_XCOORDINATE_BITS_LEN / 8];
    BYTE s[ECC_MAX_XCOORDINATE_BITS_LEN / 8];
} ECCSIGNATUREBLOB, *PECCSIGNATUREBLOB;

typedef struct SKF_ENVELOPEDKEYBLOB {
    ULONG Version;
    ULONG ulSymmAlgID;
    ULONG ulBits;
    BYTE cbEncryptedPriKey[64];
    ECCPUBLICKEYBLOB PubKey;
    ECCCIPHERBLOB ECCCipherBlob;
} ENVELOPEDKEYBLOB, *PENVELOPEDKEYBLOB;

typedef struct Struct_BLOCKCIPHERPARAM {
    BYTE IV[32];
    ULONG IVLen;
    ULONG PaddingType;
    ULONG FeedBitLen;
} BLOCKCIPHERPARAM, *PBLOCKCIPHERPARAM;

#pragma pack(pop)

typedef ULONG (*SKF_EnumDev_t)(BOOL, LPSTR, ULONG *);
typedef ULONG (*SKF_ConnectDev_t)(LPSTR, DEVHANDLE *);
typedef ULONG (*SKF_DisConnectDev_t)(DEVHANDLE);
typedef ULONG (*SKF_GetDevState_t)(LPSTR, ULONG *);
typedef ULONG (*SKF_GetDevInfo_t)(DEVHANDLE, DEVINFO *);
typedef ULONG (*SKF_SetLabel_t)(DEVHANDLE, LPSTR);
typedef ULONG (*SKF_GenRandom_t)(DEVHANDLE, BYTE *, ULONG);
typedef ULONG (*SKF_DevAuth_t)(DEVHANDLE, BYTE *, ULONG);
typedef ULONG (*SKF_ChangeDevAuthKey_t)(DEVHANDLE, BYTE *, ULONG);
typedef ULONG (*SKF_CreateApplication_t)(DEVHANDLE, LPSTR, LPSTR, DWORD, LPSTR, DWORD, DWORD,
                                         HAPPLICATION *);
typedef ULONG (*SKF_EnumApplication_t)(DEVHANDLE, LPSTR, ULONG *);
typedef ULONG (*SKF_OpenApplication_t)(DEVHANDLE, LPSTR, HAPPLICATION *);
typedef ULONG (*SKF_CloseApplication_t)(HAPPLICATION);
typedef ULONG (*SKF_VerifyPIN_t)(HAPPLICATION, ULONG, LPSTR, ULONG *);
typedef ULONG (*SKF_GetPINInfo_t)(HAPPLICATION, ULONG, ULONG *, ULONG *, BOOL *);
typedef ULONG (*SKF_UnblockPIN_t)(HAPPLICATION, LPSTR, LPSTR, ULONG *);
typedef ULONG (*SKF_ChangePIN_t)(HAPPLICATION, ULONG, LPSTR, LPSTR, ULONG *);
typedef ULONG (*SKF_ClearSecureState_t)(HAPPLICATION);
typedef ULONG (*SKF_CreateContainer_t)(HAPPLICATION, LPSTR, HCONTAINER *);
typedef ULONG (*SKF_EnumContainer_t)(HAPPLICATION, LPSTR, ULONG *);
typedef ULONG (*SKF_CloseContainer_t)(HCONTAINER);
typedef ULONG (*SKF_GetContainerType_t)(HCONTAINER, ULONG *);
typedef ULONG (*SKF_GenECCKeyPair_t)(HCONTAINER, ULONG, ECCPUBLICKEYBLOB *);
typedef ULONG (*SKF_ImportECCKeyPair_t)(HCONTAINER, PENVELOPEDKEYBLOB);
typedef ULONG (*SKF_ExportPublicKey_t)(HCONTAINER, BOOL, BYTE *, ULONG *);
typedef ULONG (*SKF_DigestInit_t)(DEVHANDLE, ULONG, ECCPUBLICKEYBLOB *, unsigned char *, ULONG,
                                  HANDLE *);
typedef ULONG (*SKF_Digest_t)(HANDLE, BYTE *, ULONG, BYTE *, ULONG *);
typedef ULONG (*SKF_CloseHandle_t)(HANDLE);
typedef ULONG (*SKF_ECCSignData_t)(HCONTAINER, BYTE *, ULONG, PECCSIGNATUREBLOB);
typedef ULONG (*SKF_ECCVerify_t)(DEVHANDLE, ECCPUBLICKEYBLOB *, BYTE *, ULONG, PECCSIGNATUREBLOB);
typedef ULONG (*SKF_ExtECCEncrypt_t)(DEVHANDLE, ECCPUBLICKEYBLOB *, BYTE *, ULONG, PECCCIPHERBLOB);
typedef ULONG (*SKF_ImportCertificate_t)(HCONTAINER, BOOL, BYTE *, ULONG);
typedef ULONG (*SKF_ExportCertificate_t)(HCONTAINER, BOOL, BYTE *, ULONG *);

typedef ULONG (*SKF_ImportSessionKey_t)(HCONTAINER, ULONG, BYTE *, ULONG, HANDLE *);
typedef ULONG (*SKF_EncryptInit_t)(HANDLE, BLOCKCIPHERPARAM);
typedef ULONG (*SKF_Encrypt_t)(HANDLE, BYTE *, ULONG, BYTE *, ULONG *);
typedef ULONG (*SKF_DecryptInit_t)(HANDLE, BLOCKCIPHERPARAM);
typedef ULONG (*SKF_Decrypt_t)(HANDLE, BYTE *, ULONG, BYTE *, ULONG *);

#endif
