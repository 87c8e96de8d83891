//! Cryptographic services (GM/T 0016-2012, 7.6): SM2 key pairs on the token, signatures,
//! encryption to an outside key, SM3 with the signer-ID preprocessing.

use super::*;

impl SkfEngine {
    /// `SKF_GenECCKeyPair` (`SGD_SM2_1`, user PIN verified): a new signing key pair
    /// (replacing the container's, and its certificate); returns x‖y.
    pub fn gen_ecc_keypair(&self, h: usize, alg: u32) -> Result<[u8; 64], Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_GenECCKeyPair")?;
        if alg != SGD_SM2_1 {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        self.require_user(&c.app)?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name).map(|_| ())
        })?;
        let start = Instant::now();
        let (d, public) = gm::generate();
        self.delay(&c.app.dev, Op::KeygenSm2, start.elapsed())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_key(
                &c.app.name,
                &c.name,
                true,
                StoredKey::new(&d, &public),
                l.capacity,
            )
        })?;
        Ok(public)
    }

    /// `SKF_ImportECCKeyPair` (user PIN verified): an encryption key pair enveloped to the
    /// container's signing key — SM4-ECB key encrypted with SM2 to the signing public key,
    /// the private key encrypted under it (the 64-byte field right-aligned: either the whole
    /// field encrypted, or zeros followed by the 32 encrypted bytes). The decrypted key must
    /// match the envelope's public key (`SAR_INDATAERR`).
    pub fn import_ecc_keypair(&self, h: usize, env: &Envelope) -> Result<(), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ImportECCKeyPair")?;
        self.require_user(&c.app)?;
        if env.version != 1 || env.bits != 256 {
            return Err(SAR_INVALIDPARAMERR);
        }
        if env.sym_alg != SGD_SM4_ECB {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        let start = Instant::now();
        let sign = self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(true)
                .cloned()
                .ok_or(SAR_KEYNOTFOUNTERR)
        })?;
        let sign_d = sign.private()?;
        let sym = gm::decrypt(&sign_d, &env.cipher)?;
        let sym: [u8; 16] = sym[..].try_into().map_err(|_| SAR_INDATAERR)?;
        let whole = gm::sm4_ecb(&sym, &env.encrypted_private, false)?;
        let d: Zeroizing<[u8; 32]> = if whole[..32].iter().all(|b| *b == 0) {
            Zeroizing::new(whole[32..].try_into().map_err(|_| SAR_FAIL)?)
        } else if env.encrypted_private[..32].iter().all(|b| *b == 0) {
            let tail = gm::sm4_ecb(&sym, &env.encrypted_private[32..], false)?;
            Zeroizing::new(tail[..].try_into().map_err(|_| SAR_FAIL)?)
        } else {
            return Err(SAR_INDATAERR);
        };
        if gm::public_of(&d)? != env.public {
            return Err(SAR_INDATAERR);
        }
        self.delay(&c.app.dev, Op::Decrypt, start.elapsed())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_key(
                &c.app.name,
                &c.name,
                false,
                StoredKey::new(&d, &env.public),
                l.capacity,
            )
        })
    }

    /// `SKF_ExportPublicKey` (no PIN needed): x‖y of the signing (`true`) or encryption key.
    pub fn export_public_key(&self, h: usize, sign: bool) -> Result<[u8; 64], Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ExportPublicKey")?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(sign)
                .ok_or(SAR_KEYNOTFOUNTERR)?
                .public()
        })
    }

    /// `SKF_ECCSignData` (user PIN verified): signs a 32-byte hash (SM3 with Z, computed by
    /// the caller) with the signing key; (r, s).
    pub fn ecc_sign(&self, h: usize, hash: &[u8]) -> Result<([u8; 32], [u8; 32]), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ECCSignData")?;
        if hash.len() != 32 {
            return Err(SAR_INDATALENERR);
        }
        self.require_user(&c.app)?;
        let key = self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(true)
                .cloned()
                .ok_or(SAR_KEYNOTFOUNTERR)
        })?;
        let start = Instant::now();
        let d = key.private()?;
        let sig = gm::sign(&d, hash)?;
        self.delay(&c.app.dev, Op::SignSm2, start.elapsed())?;
        Ok(sig)
    }

    /// `SKF_ECCVerify`: `SAR_FAIL` when the signature does not verify.
    pub fn ecc_verify(
        &self,
        h: usize,
        public: &[u8; 64],
        hash: &[u8],
        r: &[u8; 32],
        s: &[u8; 32],
    ) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ECCVerify")?;
        if hash.len() != 32 {
            return Err(SAR_INDATALENERR);
        }
        gm::verify(public, hash, r, s)
    }

    /// `SKF_ExtECCEncrypt`: SM2 encryption of 1 to [`MAX_ECC_PLAIN`] bytes to a public key.
    pub fn ext_ecc_encrypt(
        &self,
        h: usize,
        public: &[u8; 64],
        plain: &[u8],
    ) -> Result<gm::Cipher, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ExtECCEncrypt")?;
        if plain.is_empty() || plain.len() > MAX_ECC_PLAIN {
            return Err(SAR_INDATALENERR);
        }
        gm::encrypt(public, plain)
    }

    /// `SKF_DigestInit` (`SGD_SM3`): with a public key, the hash starts with Z of that key
    /// and `id` (the default ID of GM/T 0009 when `id` is empty).
    pub fn digest_init(
        &self,
        h: usize,
        alg: u32,
        public: Option<&[u8; 64]>,
        id: &[u8],
    ) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DigestInit")?;
        if alg != SGD_SM3 {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        let state = match public {
            Some(p) => {
                gm::check_public(p)?;
                let id = if id.is_empty() { gm::DEFAULT_ID } else { id };
                gm::Sm3State::new(Some((id, p)))?
            }
            None => gm::Sm3State::new(None)?,
        };
        self.add(Handle::Hash {
            dev: h,
            state: Some(state),
        })
    }

    fn hash_dev(&self, h: usize) -> Result<usize, Sar> {
        match self.lock()?.handles.get(&h) {
            Some(Handle::Hash {
                dev,
                state: Some(_),
            }) => Ok(*dev),
            Some(Handle::Hash { state: None, .. }) => Err(SAR_HASHOBJERR),
            _ => Err(SAR_INVALIDHANDLEERR),
        }
    }

    fn hash_step(
        &self,
        h: usize,
        function: &str,
        data: &[u8],
        finish: bool,
    ) -> Result<Option<[u8; 32]>, Sar> {
        let d = self.dev(self.hash_dev(h)?)?;
        self.enter(&d, function)?;
        let mut st = self.lock()?;
        let Some(Handle::Hash { state, .. }) = st.handles.get_mut(&h) else {
            return Err(SAR_INVALIDHANDLEERR);
        };
        let s = state.as_mut().ok_or(SAR_HASHOBJERR)?;
        s.update(data);
        if finish {
            Ok(state.take().map(gm::Sm3State::finish))
        } else {
            Ok(None)
        }
    }

    /// `SKF_Digest`: the data, then the hash; the hash handle is used up (close it with
    /// `SKF_CloseHandle`).
    pub fn digest(&self, h: usize, data: &[u8]) -> Result<[u8; 32], Sar> {
        self.hash_step(h, "SKF_Digest", data, true)?
            .ok_or(SAR_HASHOBJERR)
    }

    /// `SKF_DigestUpdate`.
    pub fn digest_update(&self, h: usize, data: &[u8]) -> Result<(), Sar> {
        self.hash_step(h, "SKF_DigestUpdate", data, false)
            .map(|_| ())
    }

    /// `SKF_DigestFinal`.
    pub fn digest_final(&self, h: usize) -> Result<[u8; 32], Sar> {
        self.hash_step(h, "SKF_DigestFinal", &[], true)?
            .ok_or(SAR_HASHOBJERR)
    }

    /// Whether `h` is a hash handle that can still produce its hash (a length query
    /// answers without using it up).
    pub fn hash_ready(&self, h: usize) -> Result<(), Sar> {
        self.hash_dev(h).map(|_| ())
    }

    /// `SKF_CloseHandle`: a hash or session-key handle.
    pub fn close_handle(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(
            st.handles.get(&h),
            Some(Handle::Hash { .. } | Handle::Key { .. })
        ) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        st.handles.remove(&h);
        Ok(())
    }
}
