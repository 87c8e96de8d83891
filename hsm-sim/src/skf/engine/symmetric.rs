//! Session keys and SM4 encryption (GM/T 0016-2012, 7.6): a key wrapped to the container's
//! encryption key (`SKF_ImportSessionKey`) or given in clear (`SKF_SetSymmKey`), one SM4-ECB
//! or SM4-CBC encryption or decryption at a time. What a desk uses to check that the
//! encryption key on a token can decrypt.

use super::*;

fn check_alg(alg: u32) -> Result<(), Sar> {
    match alg {
        SGD_SM4_ECB | SGD_SM4_CBC => Ok(()),
        _ => Err(SAR_NOTSUPPORTYETERR),
    }
}

impl SkfEngine {
    /// `SKF_ImportSessionKey` (user PIN verified): the SM4 key (`SGD_SM4_ECB` or
    /// `SGD_SM4_CBC`) that `wrapped` carries, decrypted with the container's encryption key.
    pub fn import_session_key(
        &self,
        h: usize,
        alg: u32,
        wrapped: &gm::Cipher,
    ) -> Result<usize, Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ImportSessionKey")?;
        check_alg(alg)?;
        self.require_user(&c.app)?;
        let enc = self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(false)
                .cloned()
                .ok_or(SAR_KEYNOTFOUNTERR)
        })?;
        let start = Instant::now();
        let d = enc.private()?;
        let key = gm::decrypt(&d, wrapped)?;
        let key: [u8; 16] = key[..].try_into().map_err(|_| SAR_INDATAERR)?;
        self.delay(&c.app.dev, Op::Decrypt, start.elapsed())?;
        self.add(Handle::Key {
            dev: c.app.dev.handle,
            key: Zeroizing::new(key),
            alg,
            op: None,
        })
    }

    /// `SKF_SetSymmKey`: a 16-byte SM4 key given in clear.
    pub fn set_symm_key(&self, h: usize, key: &[u8], alg: u32) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_SetSymmKey")?;
        check_alg(alg)?;
        let key: [u8; 16] = key.try_into().map_err(|_| SAR_INVALIDPARAMERR)?;
        self.add(Handle::Key {
            dev: h,
            key: Zeroizing::new(key),
            alg,
            op: None,
        })
    }

    /// The device of a key handle, checked present.
    fn key_dev(&self, h: usize) -> Result<DevCtx, Sar> {
        let dev = match self.lock()?.handles.get(&h) {
            Some(Handle::Key { dev, .. }) => *dev,
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        self.dev(dev)
    }

    /// `SKF_EncryptInit` / `SKF_DecryptInit`: `iv` (16 bytes) for CBC, ignored for ECB;
    /// `padding` 0 (none) or 1 (PKCS#5).
    pub fn cipher_init(&self, h: usize, encrypt: bool, iv: &[u8], padding: u32) -> Result<(), Sar> {
        let d = self.key_dev(h)?;
        let function = if encrypt {
            "SKF_EncryptInit"
        } else {
            "SKF_DecryptInit"
        };
        self.enter(&d, function)?;
        let padding = match padding {
            0 => false,
            1 => true,
            _ => return Err(SAR_INVALIDPARAMERR),
        };
        let mut st = self.lock()?;
        let Some(Handle::Key { alg, op, .. }) = st.handles.get_mut(&h) else {
            return Err(SAR_INVALIDHANDLEERR);
        };
        let mut block = [0u8; 16];
        if *alg == SGD_SM4_CBC {
            block = iv.try_into().map_err(|_| SAR_INVALIDPARAMERR)?;
        }
        *op = Some(SymOp {
            encrypt,
            iv: block,
            padding,
        });
        Ok(())
    }

    /// The output length of `SKF_Encrypt`/`SKF_Decrypt` for `n` bytes of input (for a
    /// decryption an upper bound); `SAR_NOTINITIALIZEERR` without an operation of that kind.
    pub fn cipher_len(&self, h: usize, encrypt: bool, n: usize) -> Result<usize, Sar> {
        let st = self.lock()?;
        match st.handles.get(&h) {
            Some(Handle::Key { op: Some(op), .. }) if op.encrypt == encrypt => {
                Ok(if encrypt && op.padding {
                    (n / 16 + 1) * 16
                } else {
                    n
                })
            }
            Some(Handle::Key { .. }) => Err(SAR_NOTINITIALIZEERR),
            _ => Err(SAR_INVALIDHANDLEERR),
        }
    }

    /// `SKF_Encrypt` / `SKF_Decrypt`: the whole input in one call; the operation ends.
    pub fn cipher(&self, h: usize, encrypt: bool, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, Sar> {
        let d = self.key_dev(h)?;
        self.enter(
            &d,
            if encrypt {
                "SKF_Encrypt"
            } else {
                "SKF_Decrypt"
            },
        )?;
        let (key, alg, op) = {
            let mut st = self.lock()?;
            match st.handles.get_mut(&h) {
                Some(Handle::Key { key, alg, op, .. }) => match op.take() {
                    Some(o) if o.encrypt == encrypt => (key.clone(), *alg, o),
                    other => {
                        *op = other;
                        return Err(SAR_NOTINITIALIZEERR);
                    }
                },
                _ => return Err(SAR_INVALIDHANDLEERR),
            }
        };
        let run = |input: &[u8]| {
            if alg == SGD_SM4_CBC {
                gm::sm4_cbc(&key, &op.iv, input, encrypt)
            } else {
                gm::sm4_ecb(&key, input, encrypt)
            }
        };
        if encrypt {
            let mut input = Zeroizing::new(data.to_vec());
            if op.padding {
                let pad = 16 - data.len() % 16;
                input.extend(std::iter::repeat_n(pad as u8, pad));
            }
            return run(&input);
        }
        let mut out = run(data)?;
        if op.padding {
            let pad = usize::from(*out.last().ok_or(SAR_DECRYPTPADERR)?);
            let ok = (1..=16).contains(&pad)
                && pad <= out.len()
                && out[out.len() - pad..]
                    .iter()
                    .all(|b| usize::from(*b) == pad);
            if !ok {
                return Err(SAR_DECRYPTPADERR);
            }
            let keep = out.len() - pad;
            out.truncate(keep);
        }
        Ok(out)
    }
}
